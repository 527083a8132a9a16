"""gunicorn config for bench/memory_probe.py: the product's settings plus a debug hook in each worker
(bench/memory_probe_hook.py). Never used by the product."""

import os

from zipstream import gunicorn_conf as _product
from zipstream.gunicorn_conf import *  # noqa: F403 - the product's settings, unchanged


def post_worker_init(worker: object) -> None:
    _product.post_worker_init(worker)
    from bench import memory_probe_hook

    memory_probe_hook.start(os.environ["PROBE_DIR"])
