"""No Flask below the web layer: importing the modules that read sources, lay out zips and store
bundles (and everything they import) loads neither Flask nor Werkzeug.

Each import runs in a fresh interpreter, so what this test process already imported can't hide one.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

BELOW_THE_WEB = [
    "zipstream.sources",
    "zipstream.sources.http",
    "zipstream.sources.s3",
    "zipstream.sources.file",
    "zipstream.connections",
    "zipstream.counters",
    "zipstream.chunks",
    "zipstream.preflight",
    "zipstream.plan",
    "zipstream.archive",
    "zipstream.download",
    "zipstream.prefetch",
    "zipstream.stream",
    "zipstream.cooperative",
    "zipstream.repositories",
    "zipstream.repositories.sqlite",
    "zipstream.repositories.postgres",
    "zipstream.repositories.dynamodb",
    "zipstream.cli",  # the release step (`zipstream migrate`) and the bundle commands: no web stack
]


@pytest.mark.parametrize("module", BELOW_THE_WEB)
def test_importing_does_not_load_flask(module: str) -> None:
    code = (f"import sys, {module}; "
            "print(' '.join(sorted(name for name in ('flask', 'werkzeug') if name in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"importing {module} loads {done.stdout.strip()}"


def test_the_web_layer_does_load_flask() -> None:
    """The check can fail: the blueprint modules do import Flask."""
    code = "import sys, zipstream.metrics; print('flask' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == "True", done.stderr
