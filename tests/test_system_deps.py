"""tests/support/system_deps.py: knows every Debian package the tests need, and which are missing."""

from __future__ import annotations

import subprocess
import sys

from .support import browser, readers, system_deps


def test_lists_readers_and_browser_packages() -> None:
    assert set(readers.DEBIAN_PACKAGES) <= set(system_deps.PACKAGES)
    assert {"chromium", "chromium-driver"} <= set(system_deps.PACKAGES)
    assert set(browser.DEBIAN_PACKAGES) <= set(system_deps.PACKAGES)


def test_missing_reports_packages_dpkg_does_not_have() -> None:
    assert system_deps.missing(("dpkg", "zipstream-no-such-package")) == ["zipstream-no-such-package"]


def test_script_runs_standalone_and_is_quick_when_nothing_is_missing() -> None:
    if system_deps.missing(system_deps.PACKAGES):
        return  # would install; covered by make unit
    result = subprocess.run([sys.executable, str(system_deps.__file__)], capture_output=True, text=True,
                            timeout=30, check=True)
    assert "all" in result.stdout
    assert "present" in result.stdout
