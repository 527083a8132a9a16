"""Install every Debian package the tests need (zip readers, chromium, download clients) that is missing, then the
readers that are not Debian packages: yauzl 2.x/3.x (npm, into the test cache) and the Go checker
(built once from tests/support/zipcheck.go into the test cache).

Run by `make unit` (and so by CI) before pytest: `python tests/support/system_deps.py`.
Idempotent and fast when everything is there (one dpkg-query, two cache look-ups); installs Debian
packages only as root, quietly, and says what it did. Without root it lists what is missing and
leaves the tests to skip (or, with CI=true, to fail).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import browser, clients, readers  # noqa: E402 - needs the repository root on sys.path

PACKAGES: tuple[str, ...] = (*readers.DEBIAN_PACKAGES, *browser.DEBIAN_PACKAGES, *clients.DEBIAN_PACKAGES)


def missing(packages: tuple[str, ...]) -> list[str]:
    """The packages dpkg does not report as installed."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
        capture_output=True, text=True, check=False,
    )
    installed = {line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")}
    return [package for package in packages if package not in installed]


def main() -> int:
    status = debian_packages()
    if status == 0:
        status = non_debian_readers()
    return status


def debian_packages() -> int:
    """apt-get install what dpkg lacks (plus npm when Debian's nodejs came without it)."""
    absent = missing(PACKAGES)
    if not absent and shutil.which("npm") is None:
        absent = ["npm"]  # Debian's nodejs ships npm separately; NodeSource's includes it
    if not absent:
        print(f"system_deps: all {len(PACKAGES)} Debian packages present ({' '.join(PACKAGES)})")
        return 0
    if os.geteuid() != 0:
        print(f"system_deps: missing {' '.join(absent)}; not root, so not installing "
              f"(run: sudo apt-get install -y {' '.join(absent)})")
        return 0
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"system_deps: installing {' '.join(absent)}", flush=True)
    install = ["apt-get", "install", "-y", "-qq", *absent]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=False).returncode != 0:
        # A fresh machine has no package lists yet; fetch them once and try again.
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=True)
    if "npm" not in absent and shutil.which("npm") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "npm"], env=env, stdout=subprocess.DEVNULL, check=True)
    still = missing(PACKAGES)
    if still:
        print(f"system_deps: still missing after apt-get: {' '.join(still)}", file=sys.stderr)
        return 1
    print(f"system_deps: installed {' '.join(absent)}")
    return 0


def non_debian_readers() -> int:
    """yauzl from npm and the Go checker, each into the test cache (readers.cache_dir()) once."""
    if shutil.which("npm") is None or shutil.which("go") is None:
        print("system_deps: npm or go missing; yauzl and the Go checker not set up (tests will skip)")
        return 0
    try:
        print(f"system_deps: {readers.install_yauzl()}")
        print(f"system_deps: Go checker at {readers.go_checker()}")
    except RuntimeError as error:
        print(f"system_deps: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
