"""Heroku-style deploy files stay in sync with the code: .env.example, app.json, Procfile, .python-version."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path

from zipstream.config import Config

ROOT = Path(__file__).resolve().parents[1]

# Read outside Config.from_env: by gunicorn_conf.py, boto3 (endpoints), the CLI, prometheus-client.
RUNTIME = {
    "WEB_CONCURRENCY", "WORKER_CONNECTIONS", "GRACEFUL_TIMEOUT", "WORKER_TIMEOUT", "ACCESS_LOG",
    "PROMETHEUS_MULTIPROC_DIR", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_DYNAMODB",
    "ZIPSTREAM_URL",
}
# Set by the platform (PORT, DATABASE_URL) or meaningless there (the CLI's target).
NOT_IN_APP_JSON = {"PORT", "DATABASE_URL", "ZIPSTREAM_URL"}


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
    assert config_variables() - documented == set(), "add these to .env.example"
    assert documented - config_variables() - RUNTIME == set(), "stale names in .env.example"


def test_runtime_variables_are_really_read_somewhere() -> None:
    code = "\n".join(path.read_text() for path in (ROOT / "zipstream").rglob("*.py"))
    for name in RUNTIME:
        assert name in code, name


def test_env_example_values_are_the_defaults() -> None:
    example = {name: value for name, value in env_example().items() if name not in RUNTIME}
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
    assert Config.from_env({name: spec.get("value", "") for name, spec in app["env"].items()
                            if name not in RUNTIME} | {"DATABASE_URL": "postgres://h/db"}).db_interface == "postgres"


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
