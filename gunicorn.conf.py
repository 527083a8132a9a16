"""gunicorn settings (gevent worker): kept in the package so `zipstream serve` uses the same ones."""

from zipstream.gunicorn_conf import *  # noqa: F403
