"""Deploy files stay in sync with the code and really work.

.env.example, app.json, Procfile, .python-version, requirements.txt (Heroku's Python buildpack), the Makefile,
and `zipstream serve`'s address.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path

import psycopg2
import requests

from zipstream.config import SETTINGS, Config

from .support.live import free_port
from .support.pgdb import throwaway_database
from .support.sockets import listening_addresses
from .support.upstream import UpstreamServer

ROOT = Path(__file__).resolve().parents[1]

# Set by the platform (PORT, DATABASE_URL) or meaningless there (the CLI's target).
# HOST is `zipstream serve`'s address; on a platform the Procfile's gunicorn line binds 0.0.0.0:$PORT.
NOT_IN_APP_JSON = {"PORT", "DATABASE_URL", "ZIPSTREAM_URL", "HOST"}


class _Recorder(Mapping[str, str]):
    """An empty environment that remembers every variable Config.from_env asks for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def config_variables() -> set[str]:
    recorder = _Recorder()
    Config.from_env(recorder)
    return recorder.asked


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def test_env_example_names_every_variable_and_nothing_else() -> None:
    documented = set(env_example())
    assert config_variables() <= set(SETTINGS), "Config.from_env reads a variable that is not declared"
    assert set(SETTINGS) - documented == set(), "add these to .env.example"
    assert documented - set(SETTINGS) == set(), "stale names in .env.example"


def test_every_declared_setting_is_used() -> None:
    """Each declaration is read somewhere: a Config field (`NAME.field()`) or `NAME.read(...)` in the server,
    the CLI, the metrics or the boto3 endpoint lookup."""
    used = {node.id for path in (ROOT / "zipstream").rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    assert set(SETTINGS) - used == set(), "declared but never read"


def test_env_example_values_are_the_defaults() -> None:
    example = env_example()
    assert {name: example[name] for name in SETTINGS} == {name: s.shown_default for name, s in SETTINGS.items()}
    documented, default = Config.from_env(example), Config.from_env({})
    for field in fields(Config):
        assert getattr(documented, field.name) == getattr(default, field.name), field.name


def test_app_json_describes_every_config_var() -> None:
    app = json.loads((ROOT / "app.json").read_text())
    assert set(app["env"]) == set(env_example()) - NOT_IN_APP_JSON
    for name, spec in app["env"].items():
        assert spec["description"].strip(), name
        assert spec.get("required") is False, name
    assert {"plan": "heroku-postgresql"} in app["addons"]
    assert app["env"]["DB_INTERFACE"]["value"] == "postgres"
    values = {name: spec.get("value", "") for name, spec in app["env"].items()}
    for name in values:
        SETTINGS[name].read(values)  # every value is one its declaration takes (ConfigError otherwise)
    assert Config.from_env(values | {"DATABASE_URL": "postgres://h/db"}).db_interface == "postgres"


def test_procfile_python_version_and_gunicorn_config() -> None:
    procfile = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert procfile["release"].strip() == "zipstream migrate"
    web = procfile["web"].split()
    assert web[0] == "gunicorn"
    assert (ROOT / web[web.index("--config") + 1]).is_file()
    assert web[-1] == "zipstream.wsgi:app"
    version = (ROOT / ".python-version").read_text().strip()
    assert re.fullmatch(r"3\.\d+", version)
    assert f">={version}" in (ROOT / "setup.cfg").read_text()


# --- Heroku's Python buildpack -------------------------------------------------------------------------
# heroku/heroku-buildpack-python (lib/package_manager.sh, lib/pip.sh; PRs #1897/#1992: setup.py alone is no
# longer enough, #1993: several package manager files fail the build): exactly one package manager file at the
# root picks the installer. With requirements.txt it runs this command in the app's directory (pip of the
# Python it installed from .python-version).
PACKAGE_MANAGER_FILES = ("requirements.txt", "Pipfile", "Pipfile.lock", "poetry.lock", "uv.lock")
BUILDPACK_PIP = ["install", "-r", "requirements.txt", "--disable-pip-version-check", "--exists-action=w",
                 "--no-cache-dir", "--no-input", "--progress-bar", "off"]


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {name.strip(): command.strip() for name, _, command in (line.partition(":") for line in lines) if name}


def test_buildpack_finds_exactly_one_package_manager_file() -> None:
    assert [name for name in PACKAGE_MANAGER_FILES if (ROOT / name).exists()] == ["requirements.txt"]
    # The buildpack wants the major version form (security updates come with each build).
    assert re.fullmatch(r"3\.\d+", (ROOT / ".python-version").read_text().strip())
    app = json.loads((ROOT / "app.json").read_text())
    assert app["buildpacks"] == [{"url": "heroku/python"}]


def _source_tree(destination: Path) -> None:
    """What `git push` sends: the tracked files plus new ones not ignored (this worktree's state)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def _platform_env(tmp: Path, port: int, database_url: str, upstream_port: int) -> dict[str, str]:
    """What a Heroku button deploy gives the dyno: app.json's values, PORT, DATABASE_URL (add-on)."""
    app = json.loads((ROOT / "app.json").read_text())
    inherited = {name: value for name, value in os.environ.items()
                 if not name.startswith(("DB_", "AWS_", "PYTHON", "VIRTUAL_ENV", "PIP_"))
                 and name not in app["env"] and name not in ("DATABASE_URL", "TABLE_NAME", "HOST")}
    return {
        **inherited,
        **{name: spec["value"] for name, spec in app["env"].items() if "value" in spec},
        "PORT": str(port),
        "DATABASE_URL": database_url.replace("postgresql://", "postgres://", 1),  # the add-on's spelling
        "WEB_CONCURRENCY": "1",  # Heroku sets it from the dyno size
        # The test's upstream is this host's loopback: allowed, and nothing but it (the web line binds 0.0.0.0).
        "FS_INTERFACES": "https",
        "HTTP_ALLOW_PRIVATE": "true",
        "HTTP_HOSTS": "127.0.0.1",
        "PYTHONWARNINGS": "ignore",
        "PATH": f"{tmp / 'python' / 'bin'}:{os.environ['PATH']}",
    }


def _console_scripts(python: Path, shared: Path) -> None:
    """The dependencies' commands (gunicorn...) in the fresh environment's bin/, as pip would write them there.

    pip finds them already installed in the shared environment, so it writes none; the Procfile needs them
    on PATH, running the fresh interpreter (the shared environment's own scripts would run its zipstream).
    """
    for distribution in importlib.metadata.distributions(path=[str(shared)]):
        if distribution.metadata["Name"] == "zipstream":
            continue
        for entry in distribution.entry_points.select(group="console_scripts"):
            module, _, attribute = entry.value.partition(":")
            script = python.parent / entry.name
            script.write_text(f"#!{python}\nimport sys\nfrom {module} import {attribute.split('.')[0]}\n"
                              f"sys.exit({attribute}())\n")
            script.chmod(0o755)


def test_buildpack_install_then_release_then_web(tmp_path: Path, postgres_url: str) -> None:
    """Install as the buildpack does into a fresh Python, run the Procfile's release then web lines."""
    app_dir = tmp_path / "app"
    _source_tree(app_dir)
    # A fresh environment with the shared one's packages visible (offline, fast): the buildpack's pip
    # resolves every dependency as already there and builds and installs the project itself.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "python")], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(tmp_path / "python")}))
    (site / "shared.pth").write_text(sysconfig.get_path("purelib") + "\n")
    python = tmp_path / "python" / "bin" / "python"
    _console_scripts(python, Path(sysconfig.get_path("purelib")))
    install = subprocess.run([str(python), "-m", "pip", *BUILDPACK_PIP], cwd=app_dir, capture_output=True,
                             text=True, check=False)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert (tmp_path / "python" / "bin" / "zipstream").is_file(), "console script from setup.cfg missing"
    shutil.rmtree(app_dir / "build", ignore_errors=True)

    processes = procfile()
    with UpstreamServer({"/a.txt": b"alpha " * 1000, "/b.bin": bytes(range(256)) * 400}) as upstream, \
            throwaway_database(postgres_url, "zs_buildpack") as database_url:
        port = free_port()
        env = _platform_env(tmp_path, port, database_url, upstream.port)
        release = subprocess.run(["bash", "-c", processes["release"]], cwd=app_dir, env=env, capture_output=True,
                                 text=True, timeout=60, check=False)
        assert release.returncode == 0, release.stderr[-3000:]
        with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            tables = {row[0] for row in cursor.fetchall()}
        connection.close()
        assert "bundles" in tables, f"the release step created only {sorted(tables)}: {release.stdout!r}"

        log = (tmp_path / "web.log").open("wb")
        web = subprocess.Popen(["bash", "-c", "exec " + processes["web"]], cwd=app_dir, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert web.poll() is None, (tmp_path / "web.log").read_text()[-3000:]
                with contextlib.suppress(requests.ConnectionError):
                    if requests.get(f"{base}/health-check", headers={"Connection": "close"}, timeout=5).ok:
                        break
                assert time.monotonic() < deadline, (tmp_path / "web.log").read_text()[-3000:]
                time.sleep(0.2)
            assert listening_addresses(port) == {"0.0.0.0"}  # the platform's router reaches $PORT on any address
            files = [{"src": upstream.url("/a.txt")}, {"src": upstream.url("/b.bin"), "dst": "dir/b.bin"}]
            # One request per connection: an idle keep-alive connection would hold the worker's graceful exit.
            close = {"Connection": "close"}
            created = requests.post(f"{base}/", json={"files": files}, headers=close, timeout=30)
            assert created.status_code == 201, created.text
            download = requests.get(f"{base}/{created.json()['id']}", headers=close, timeout=30)
            assert download.status_code == 200, download.text
            with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
                assert archive.testzip() is None
                assert archive.read("a.txt") == b"alpha " * 1000
                assert archive.read("dir/b.bin") == bytes(range(256)) * 400
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(web.pid, signal.SIGTERM)
            try:
                web.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(web.pid, signal.SIGKILL)
                web.wait()
            log.close()
        assert web.returncode == 0, (tmp_path / "web.log").read_text()[-3000:]


# --- `make run` / `zipstream serve` ---------------------------------------------------------------------

@contextlib.contextmanager
def _zipstream_serve(tmp: Path, **env: str) -> Iterator[int]:
    """`zipstream serve` (this interpreter's), with PORT set; yields the port once it answers."""
    port = free_port()
    full_env = {**{name: value for name, value in os.environ.items() if name != "HOST"},
                "PORT": str(port), "WEB_CONCURRENCY": "1", "SQLITE_PATH": str(tmp / "serve.sqlite3"),
                "PYTHONWARNINGS": "ignore", **env}
    full_env.pop("DB_INTERFACE", None)
    full_env.pop("DATABASE_URL", None)
    migrated = subprocess.run([sys.executable, "-m", "zipstream.cli", "migrate"], cwd=ROOT, env=full_env,
                              capture_output=True, text=True, check=False)
    assert migrated.returncode == 0, migrated.stderr
    log = (tmp / f"serve-{port}.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "zipstream.cli", "serve"], cwd=ROOT, env=full_env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        host = full_env.get("HOST") or "127.0.0.1"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp / f"serve-{port}.log").read_text()[-3000:]
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"http://{host}:{port}/health-check", headers={"Connection": "close"},
                                timeout=5).ok:
                    break
            assert time.monotonic() < deadline, (tmp / f"serve-{port}.log").read_text()[-3000:]
            time.sleep(0.2)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_serve_binds_loopback_by_default(tmp_path: Path) -> None:
    with _zipstream_serve(tmp_path) as port:
        assert listening_addresses(port) == {"127.0.0.1"}


def test_serve_binds_the_host_setting(tmp_path: Path) -> None:
    # Another loopback address: shows HOST is used without listening beyond this machine.
    with _zipstream_serve(tmp_path, HOST="127.0.0.2") as port:
        assert listening_addresses(port) == {"127.0.0.2"}


def _make(*args: str) -> str:
    return subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), *args, "VENV=/nonexistent-venv"],
                          capture_output=True, text=True, check=True).stdout


def test_make_run_installs_what_serving_needs_and_binds_loopback() -> None:
    run = _make("run")
    assert "install --quiet -e .\n" in run
    assert "[test]" not in run  # moto, mypy, schemathesis, selenium: `make test` only
    assert run.rstrip().endswith("zipstream serve --host '127.0.0.1'")
    assert _make("run", "HOST=0.0.0.0").rstrip().endswith("zipstream serve --host '0.0.0.0'")
    assert "install --quiet -e '.[test]'" in _make("test")


def test_make_bench_takes_options_and_writes_untracked_results() -> None:
    bench = _make("bench", "ARGS=--only b1 --small").rstrip().splitlines()[-1]
    assert bench.endswith("-m bench --results 'bench/results/local' --only b1 --small")
    ignored = subprocess.run(["git", "check-ignore", "-q", "bench/results/local/b1_big_files.md"], cwd=ROOT,
                             check=False)
    assert ignored.returncode == 0, "bench/results/local/ must be ignored by git"
    assert _make("bench", "BENCH_OUT=bench/results").rstrip().endswith("--results 'bench/results'")
