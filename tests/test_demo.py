"""GET /demo end to end in headless chromium: tick files, download the zip, create a link, follow it."""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from zipstream import create_app
from zipstream.config import Config

from .support.browser import chromium
from .support.live import LiveServer
from .support.waiting import wait_for as _wait_for

# A browser's download or page can take a while on a loaded machine.
wait_for = functools.partial(_wait_for, timeout=15.0, interval=0.1)

FILES = {"a.txt": b"alpha\n", "c d.txt": b"with a space\n", "sub/b.csv": b"x,y\n1,2\n", "sub/e.bin": bytes(range(256))}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "files"
    for name, data in FILES.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_bytes(data)
    return base


def finished_download(directory: Path, name: str) -> Path | None:
    path = directory / name
    partial = list(directory.glob("*.crdownload"))
    return path if path.exists() and not partial else None


def check_entries(path: Path, expected: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == sorted(expected)
        for name, data in expected.items():
            assert archive.read(name) == data


def test_demo_is_off_by_default(client: FlaskClient) -> None:
    with client.get("/demo") as response:
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "not_found"


def test_demo_lists_files_under_file_root(root: Path, make_config: Callable[..., Config]) -> None:
    app = create_app(make_config(DEMO="true", FS_INTERFACES="file", FILE_ROOT=str(root)))
    with app.test_client().get("/demo") as response:
        page = response.get_data(as_text=True)
    assert response.status_code == 200
    for src in ("file:///a.txt", "file:///c%20d.txt", "file:///sub/b.csv", "file:///sub/e.bin"):
        assert f'value="{src}"' in page
    assert 'action="/bundle"' in page


def test_demo_says_so_when_an_api_key_locks_bundle_creation(root: Path, make_config: Callable[..., Config]) -> None:
    app = create_app(make_config(DEMO="true", FS_INTERFACES="file", FILE_ROOT=str(root), API_KEY="sekrit-demo-42"))
    with app.test_client().get("/demo") as response:
        page = response.get_data(as_text=True)
    assert 'id="locked"' in page
    assert '<button type="submit" id="download" disabled>' in page
    assert '<button type="button" id="create-link" disabled>' in page
    assert "sekrit-demo-42" not in page  # the key itself never reaches the browser
    unlocked = create_app(make_config(DEMO="true", FS_INTERFACES="file", FILE_ROOT=str(root)))
    with unlocked.test_client().get("/demo") as response:
        page = response.get_data(as_text=True)
    assert 'id="locked"' not in page
    assert '<button type="submit" id="download">' in page


def test_shopping_cart_in_headless_chromium(
    serve: Callable[..., LiveServer], root: Path, tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    server = serve(DEMO="true", FS_INTERFACES="file", FILE_ROOT=str(root))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with chromium(tmp_path / "profile", downloads) as driver:
        browser: Any = driver
        browser.get(server.url("/demo"))
        boxes = {box.get_attribute("value"): box for box in browser.find_elements(By.NAME, "src")}
        assert set(boxes) == {"file:///a.txt", "file:///c%20d.txt", "file:///sub/b.csv", "file:///sub/e.bin"}

        # 1. "Download selected": a plain form post to POST /bundle, the zip streams straight back.
        boxes["file:///a.txt"].click()
        boxes["file:///sub/b.csv"].click()
        browser.find_element(By.ID, "download").click()
        zipped = wait_for(lambda: finished_download(downloads, "selection.zip"), what="selection.zip")
        check_entries(zipped, {"a.txt": FILES["a.txt"], "sub/b.csv": FILES["sub/b.csv"]})

        # 2. "Create a link": POST / with fetch, then follow the link it shows.
        boxes["file:///a.txt"].click()  # untick
        boxes["file:///c%20d.txt"].click()
        boxes["file:///sub/e.bin"].click()
        name_field = browser.find_element(By.NAME, "filename")
        name_field.clear()
        name_field.send_keys("linked.zip")
        browser.find_element(By.ID, "create-link").click()
        link = wait_for(lambda: browser.find_elements(By.ID, "bundle-link"), what="the bundle link")[0]
        href = link.get_attribute("href")
        assert href.startswith(server.url("/"))
        link.click()
        linked = wait_for(lambda: finished_download(downloads, "linked.zip"), what="linked.zip")
        check_entries(linked, {"sub/b.csv": FILES["sub/b.csv"], "c d.txt": FILES["c d.txt"],
                               "sub/e.bin": FILES["sub/e.bin"]})

        # The API docs render from the app's own Swagger UI assets.
        browser.get(server.url("/docs"))
        operations = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock"), what="Swagger UI")
        assert len(operations) >= 6
