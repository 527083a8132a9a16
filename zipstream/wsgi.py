"""gunicorn's target: `gunicorn zipstream.wsgi:app`."""

import sys

from . import create_app
from .config import ConfigError

# gunicorn's exit status for "worker failed to boot": its master then stops, instead of forking
# workers that fail the same way forever.
_WORKER_BOOT_ERROR = 3

try:
    app = create_app()
except ConfigError as error:
    # One line naming the variable, not a traceback per worker.
    print(f"zipstream: configuration error: {error}", file=sys.stderr, flush=True)
    sys.exit(_WORKER_BOOT_ERROR)
