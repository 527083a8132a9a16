"""gunicorn's target: `gunicorn zipstream.wsgi:app`."""

from . import create_app

app = create_app()
