# ruff: noqa: RUF001, RUF003 - look-alike characters ("．．／", "∕", "Ｃ") are what these tests are about
"""Entry names and the zip's download name: safe on Windows, macOS and Linux, unique, found in linear time.

Table-driven: `SAFE_NAMES` holds every case of issue 14 and more; each output is also checked against
the invariants a safe name must hold (`_assert_safe`), and real extractors (Info-ZIP unzip, bsdtar,
7-Zip) extract a zip of hostile names into a directory they never leave.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import unicodedata
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.http import parse_options_header

from zipstream import names
from zipstream.models import Bundle, FileRef
from zipstream.names import UniqueNames, download_filename, safe_name, unique_names
from zipstream.repositories import get_repository

from .support.readers import require_readers
from .support.upstream import UpstreamServer

# -- safe_name: the table ----------------------------------------------------------------------

SAFE_NAMES: list[tuple[str, str]] = [
    # traversal and absolute paths (kept from the first round)
    ("../../etc/passwd", "etc/passwd"),
    ("/abs/path.txt", "abs/path.txt"),
    ("a\\b\\c.txt", "a/b/c.txt"),
    ("./x/./y.txt", "x/y.txt"),
    ("a//b.txt", "a/b.txt"),
    ("bad\x01\x1bname.txt", "badname.txt"),
    ("ok/ünï.txt", "ok/ünï.txt"),
    (".bashrc", ".bashrc"),
    ("...x", "...x"),
    # drives: every one that starts the path, drive-relative ones too (issue 14: only the first went)
    ("C:\\Windows\\x.txt", "Windows/x.txt"),
    ("C:/C:/Windows/System32/evil.dll", "Windows/System32/evil.dll"),
    ("C:x.txt", "x.txt"),
    ("D:foo/bar.txt", "foo/bar.txt"),
    ("c:\\c:\\c:x.txt", "x.txt"),
    (" C:/x.txt", "x.txt"),
    ("a/C:/b.txt", "a/C_/b.txt"),  # not a prefix: its ':' is replaced like any other
    # UNC and device namespaces
    ("//server/share/x.txt", "x.txt"),
    ("\\\\server\\share\\dir\\x.txt", "dir/x.txt"),
    ("\\\\?\\C:\\Windows\\x.dll", "Windows/x.dll"),
    ("\\\\?\\UNC\\server\\share\\x.txt", "x.txt"),
    ("\\\\.\\PhysicalDrive0", "PhysicalDrive0"),
    ("\\\\.\\CON", "_CON"),
    ("\\??\\C:\\x.txt", "x.txt"),
    # NFKC before the checks: full-width and small forms, dot leaders
    ("．．／．．／etc/passwd", "etc/passwd"),
    ("‥/‥/x.txt", "x.txt"),
    ("..＼..＼x.txt", "x.txt"),
    ("﹒﹒/x.txt", "x.txt"),
    ("..﹨x.txt", "x.txt"),
    ("ｆｕｌｌ／ｗｉｄｔｈ.txt", "full/width.txt"),
    ("．．", ""),
    ("…/x.txt", "x.txt"),
    # look-alikes NFKC leaves alone (best fit, homoglyphs): neither separators nor dots any more
    ("..∕..∕x.dll", ".._.._x.dll"),
    ("..⁄x.dll", ".._x.dll"),
    ("..⧵..⧵x.dll", ".._.._x.dll"),
    ("..∖x.dll", ".._x.dll"),
    ("..¥..¥x.dll", ".._.._x.dll"),  # 0x5C, the separator, in code page 932
    ("..₩x.dll", ".._x.dll"),  # 0x5C in code page 949
    ("..￥x.dll", ".._x.dll"),  # full-width yen: NFKC makes it ¥
    ("½ cup.txt", "1_2 cup.txt"),  # NFKC: "1⁄2" (FRACTION SLASH), not a folder "1"
    # NTFS alternate data streams and the other Windows-forbidden characters
    ("a.txt:Zone.Identifier", "a.txt_Zone.Identifier"),
    ("a.txt::$DATA", "a.txt__$DATA"),
    ("Re: notes.txt", "Re_ notes.txt"),
    ("ratio∶x.txt", "ratio_x.txt"),
    ("full：colon.txt", "full_colon.txt"),
    ('<a>|"b"*?.txt', "_a___b___.txt"),
    # reserved device names, any case, any extension, any segment
    ("CON", "_CON"),
    ("aux.txt", "_aux.txt"),
    ("Com1.log", "_Com1.log"),
    ("COM¹.txt", "_COM1.txt"),
    ("lpt9", "_lpt9"),
    ("LPT²", "_LPT2"),
    ("dir/nul.tar.gz/x.txt", "dir/_nul.tar.gz/x.txt"),
    ("prn/readme", "_prn/readme"),
    ("CON .txt", "_CON .txt"),
    ("conin$", "_conin$"),
    ("ＣＯＮ.txt", "_CON.txt"),
    ("ŃUL.txt", "_ŃUL.txt"),  # best fit drops the accent: NUL
    ("console.txt", "console.txt"),
    ("COM10.txt", "COM10.txt"),
    ("nullable.txt", "nullable.txt"),
    # trailing dots and spaces (Windows drops them: "a.txt." would overwrite "a.txt")
    ("a.txt.", "a.txt"),
    ("a.txt. . ", "a.txt"),
    ("dir./x.txt", "dir/x.txt"),
    (" dir /x.txt ", "dir/x.txt"),
    ("x\u3000.", "x"),
    ("...", ""),
    (". .", ""),
    (".. /x", "x"),
    # invisible characters: controls, bidi, other format characters, line separators
    ("inv\u202efdp.exe", "invfdp.exe"),
    ("a\u202a\u202b\u202c\u202d.txt", "a.txt"),
    ("a\u2066b\u2067c\u2068d\u2069.txt", "abcd.txt"),
    ("\u200ex\u200f.txt", "x.txt"),
    ("x\u061c.txt", "x.txt"),
    ("\ufeffbom\u200b.txt", "bom.txt"),
    ("a\u2028b\u2029c.txt", "abc.txt"),
    ("a\x7f\x85b.txt", "ab.txt"),
    (".\u202e.", ""),  # ".." once the override is gone
    ("e\u200b\u0301.txt", "é.txt"),  # dropped before NFKC, so the accent composes
    # nothing left
    ("", ""),
    ("..", ""),
    ("/", ""),
    ("C:", ""),
    ("\\\\?\\", ""),
    ("//server/share", ""),
]


def _assert_safe(name: str) -> None:
    """What every safe_name result must be, whatever went in."""
    if name == "":
        return
    assert unicodedata.normalize("NFKC", name) == name
    assert not name.startswith("/") and "\\" not in name
    for char in name:
        assert unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp", "Cs"), (name, char)
        assert char not in '<>:"|?*', (name, char)
        assert char not in "\u2215\u2044\u29f8\u2216\u29f5\u29f9\u00a5\u20a9\u2236\ua789", (name, char)
    for segment in name.split("/"):
        assert segment and segment == segment.strip() and not segment.endswith((".", " ")), (name, segment)
        assert segment.partition(".")[0].rstrip(" ").upper() not in names.RESERVED_NAMES, (name, segment)
    assert safe_name(name) == name  # idempotent


@pytest.mark.parametrize(("raw", "expected"), SAFE_NAMES)
def test_safe_name(raw: str, expected: str) -> None:
    assert safe_name(raw) == expected
    _assert_safe(expected)


def test_the_table_is_big_enough() -> None:
    assert len(SAFE_NAMES) >= 40


_HOSTILE_ALPHABET = st.sampled_from(list(
    "aA.Cc: /\\?*<>|\"\x00\x1b\u202e\u2066\u200f\ufeff\u3000．／＼‥﹒∕⁄⧵¥₩∶ＣｏｎNULlpt1²é\u0301"
))


@settings(max_examples=500, deadline=None)
@given(st.text(_HOSTILE_ALPHABET, max_size=30) | st.text(max_size=30))
def test_safe_name_invariants_hold_for_any_input(raw: str) -> None:
    _assert_safe(safe_name(raw))


# -- download_filename ---------------------------------------------------------------------------

DOWNLOAD_NAMES: list[tuple[str, str]] = [
    ("my-awesome-bundle.zip", "my-awesome-bundle.zip"),
    ("photos.ZIP", "photos.ZIP"),
    ('12" vinyl.zip', '12" vinyl.zip'),
    ("résumé 2024.zip", "résumé 2024.zip"),
    ("report", "report.zip"),
    ("x.exe", "x.exe.zip"),
    ("x.zip.exe", "x.zip.exe.zip"),
    ("inv\u202efdp.exe", "invfdp.exe.zip"),
    ("inv\u202egpj.zip", "invgpj.zip"),
    ("a/b.zip", "a_b.zip"),
    ("a\\b.zip", "a_b.zip"),
    ("../../etc/x.zip", "_.._etc_x.zip"),
    ("．．／x.zip", "_x.zip"),
    ("..∕x", "_x.zip"),
    (".hidden.zip", "hidden.zip"),
    ("  cart .zip  ", "cart .zip"),
    ("x.zip.", "x.zip"),
    ("con.zip", "_con.zip"),
    ("line\r\nbreak.zip", "linebreak.zip"),
    ("What now?.zip", "What now?.zip"),
    ("", ""),
    ("..", ""),
    ("‥", ""),
    ("\u202e", ""),
    (" . ", ""),
]


@pytest.mark.parametrize(("stored", "expected"), DOWNLOAD_NAMES)
def test_download_filename(stored: str, expected: str) -> None:
    assert download_filename(stored) == expected
    assert download_filename(expected) == expected  # idempotent


def _windows_key(path: str) -> str:
    """How NTFS/APFS would compare `path` (or stricter): per segment, case-folded, NFKC, trailing dots/spaces off."""
    return "/".join(unicodedata.normalize("NFKC", segment.casefold()).rstrip(". ") for segment in path.split("/"))


def _assert_extractable(result: list[str]) -> None:
    """No two files, and no file and folder, share a name as Windows and macOS compare names."""
    files = [_windows_key(name) for name in result]
    folders = {key.rsplit("/", depth)[0] for key in files for depth in range(1, key.count("/") + 1)}
    assert len(set(files)) == len(files)
    assert not set(files) & folders


@settings(max_examples=500, deadline=None)
@given(st.text(_HOSTILE_ALPHABET, max_size=30) | st.text(max_size=30))
def test_download_filename_invariants_hold_for_any_input(raw: str) -> None:
    shown = download_filename(raw)
    if shown:
        assert shown.lower().endswith(".zip") and not shown.startswith((".", " ")) and shown == shown.strip()
        assert not {"/", "\\"} & set(shown)
        assert all(unicodedata.category(char) not in ("Cc", "Cf", "Zl", "Zp", "Cs") for char in shown)
        assert shown.partition(".")[0].rstrip(" ").upper() not in names.RESERVED_NAMES
        assert download_filename(shown) == shown


# -- unique_names: semantics ---------------------------------------------------------------------


@pytest.mark.parametrize(("given_names", "expected"), [
    (["a.txt", "a.txt", "a.txt"], ["a.txt", "a (1).txt", "a (2).txt"]),
    (["A.txt", "a.txt"], ["A.txt", "a (1).txt"]),
    (["straße.txt", "STRASSE.txt"], ["straße.txt", "STRASSE (1).txt"]),  # casefold, as APFS and stricter than NTFS
    (["é.txt", "e\u0301.txt"], ["é.txt", "e\u0301 (1).txt"]),  # NFC and NFD are one name on macOS
    ([safe_name("a.txt"), safe_name("a.txt. ")], ["a.txt", "a (1).txt"]),  # Windows drops trailing dots
    (["a.tar.gz", "A.TAR.GZ"], ["a.tar.gz", "A (1).TAR.GZ"]),
    (["a (1).txt", "a.txt", "a.txt", "a.txt"], ["a (1).txt", "a.txt", "a (2).txt", "a (3).txt"]),
    (["docs", "docs/b.txt", "a/b.txt", "A", "x/y.txt"], ["docs", "docs (1)/b.txt", "a/b.txt", "A (1)", "x/y.txt"]),
    (["d", "d/x0", "D/x1", "d/e/x2"], ["d", "d (1)/x0", "d (1)/x1", "d (1)/e/x2"]),  # one renamed folder
    (["d/x", "d"], ["d/x", "d (1)"]),
    (["d", "d (1)", "d/x"], ["d", "d (1)", "d (2)/x"]),
    (["a/b", "a/b/c"], ["a/b", "a/b (1)/c"]),
    (["a/b", "A/B"], ["a/b", "a/B (1)"]),  # a folder keeps its first spelling
    (["Docs/a.txt", "docs/b.txt", "DOCS/x/y"], ["Docs/a.txt", "Docs/b.txt", "Docs/x/y"]),
])
def test_unique_names(given_names: list[str], expected: list[str]) -> None:
    assert unique_names(given_names) == expected
    _assert_extractable(expected)


# -- unique_names: work counted, not timed ---------------------------------------------------------

N = 10_000

SHAPES: dict[str, Callable[[], list[str]]] = {
    "equal names": lambda: ["a.txt"] * N,
    "equal names, any case": lambda: [("A.TXT", "a.txt", "A.txt")[i % 3] for i in range(N)],
    "file then folder of its name": lambda: ["d"] + [f"d/x{i}" for i in range(N - 1)],
    "names already numbered": lambda: [f"a ({i}).txt" for i in range(1, N // 2)] + ["a.txt"] * (N // 2 + 1),
    "numbered, then the base": lambda: [f"a ({i}).txt" for i in range(N - 1, 0, -1)] + ["a.txt", "a.txt"],
    "nested numbering": lambda: ["a.txt", "a (1).txt"] * (N // 2),
    "files over folders": lambda: [f"d{i % 10}/x{i}" for i in range(N // 2)] + [f"d{i % 10}" for i in range(N // 2)],
    "double extensions": lambda: ["a.tar.gz", "a (1).tar.gz", "A.TAR.GZ"] * (N // 3),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_dedup_probes_are_linear(shape: str) -> None:
    given_names = SHAPES[shape]()
    unique = UniqueNames()
    result = [unique.add(name) for name in given_names]
    assert unique.probes <= 3 * len(given_names), unique.probes
    _assert_extractable(result)


class WorkBudgetExceeded(Exception):
    pass


@contextmanager
def _work_budget(limit: int) -> Iterator[list[int]]:
    """Count every function call (Python and C) made meanwhile; past `limit`, raise WorkBudgetExceeded.

    Implementation-agnostic: quadratic de-duplication makes a call per candidate it looks at.
    """
    count = [0]

    def profile(_frame: Any, event: str, _arg: Any) -> None:
        if event in ("call", "c_call"):
            count[0] += 1
            if count[0] > limit:
                sys.setprofile(None)
                raise WorkBudgetExceeded(f"more than {limit} calls")

    sys.setprofile(profile)
    try:
        yield count
    finally:
        sys.setprofile(None)


@pytest.mark.parametrize("shape", ["equal names", "file then folder of its name", "names already numbered"])
def test_dedup_calls_stay_within_a_linear_budget(shape: str) -> None:
    """Issue 14: 10,000 equal names took ~20 s, `d` + `d/x0...d/x9998` ~27 s (a restarted counter per clash)."""
    given_names = SHAPES[shape]()
    with _work_budget(100 * len(given_names)) as calls:  # about 50 calls a name today
        unique_names(given_names)
    assert calls[0] <= 100 * len(given_names)


# -- through the HTTP API ----------------------------------------------------------------------------


def _zip(data: bytes) -> zipfile.ZipFile:
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    return archive


@pytest.fixture
def readme(upstream: UpstreamServer) -> str:
    upstream.add("/docs/readme.txt", b"hello\n")
    return upstream.url("/docs/readme.txt")


@pytest.mark.parametrize("dst", ["", "..", "/", "．．", "‥", "\u202e", ". .", "C:", "\\\\?\\", "//server/share"])
def test_a_dst_that_leaves_nothing_means_the_default_name(client: FlaskClient, readme: str, dst: str) -> None:
    response = client.post("/bundle", json={"files": [{"src": readme, "dst": dst}]})
    assert response.status_code == 200, response.data
    assert _zip(response.data).namelist() == ["docs/readme.txt"]


def test_a_bad_title_does_not_fail_the_cart(client: FlaskClient, upstream: UpstreamServer, readme: str) -> None:
    upstream.add("/p/1.pdf", b"one")
    upstream.add("/p/2.pdf", b"two")
    files = [{"src": upstream.url("/p/1.pdf"), "dst": "Invoice 1.pdf"},
             {"src": upstream.url("/p/2.pdf"), "dst": ".."},
             {"src": readme, "dst": "‥/‥/CON.txt"}]
    response = client.post("/bundle", json={"files": files, "filename": "cart"})
    assert response.status_code == 200, response.data
    assert _zip(response.data).namelist() == ["Invoice 1.pdf", "p/2.pdf", "_CON.txt"]
    assert response.headers["Content-Disposition"] == 'attachment; filename="cart.zip"'


def test_stored_dst_is_kept_as_sent_and_made_safe_at_download(client: FlaskClient, readme: str) -> None:
    files = [{"src": readme, "dst": ".."}, {"src": readme, "dst": ""}, {"src": readme, "dst": "C:/C:/a.txt."}]
    created = client.post("/", json={"files": files})
    assert created.status_code == 201, created.data
    assert created.json["files"] == files
    bundle = created.json
    assert client.get(f"/{bundle['id']}/{bundle['secret']}").json["files"] == files
    download = client.get(f"/{bundle['id']}")
    assert _zip(download.data).namelist() == ["docs/readme.txt", "docs/readme (1).txt", "a.txt"]


@pytest.mark.parametrize(("body", "field"), [
    ({"files": [{"src": "https://x/y", "dst": 12}]}, "files"),
    ({"files": [{"src": "https://x/y", "dst": ["a"]}]}, "files"),
    ({"files": [{"src": "https://x/y", "dst": "a\x00b"}]}, "files"),
    ({"files": [{"src": "https://x/y", "dst": "x" * 2000}]}, "files"),
    ({"files": [{"src": "https://x/y"}], "filename": 12}, "filename"),
    ({"files": [{"src": "https://x/y"}], "filename": ""}, "filename"),
    ({"files": [{"src": "https://x/y"}], "filename": ".."}, "filename"),
    ({"files": [{"src": "https://x/y"}], "filename": "\u202e"}, "filename"),
    ({"files": [{"src": "https://x/y"}], "filename": "z" * 256}, "filename"),
])
def test_invalid_types_and_unusable_names_are_still_422(client: FlaskClient, body: dict[str, object],
                                                        field: str) -> None:
    response = client.post("/", json=body)
    assert response.status_code == 422, response.data
    assert field in response.json["error"]["fields"]


def test_entry_names_from_srcs_are_made_safe(client: FlaskClient, upstream: UpstreamServer) -> None:
    upstream.add("/ab:c/CON.txt", b"1")
    upstream.add("/x/a.txt.", b"2")
    upstream.add("/x/A.TXT", b"3")
    response = client.post("/bundle", json={"files": [{"src": upstream.url(path)} for path in
                                                      ("/ab:c/CON.txt", "/x/a.txt.", "/x/A.TXT")]})
    assert response.status_code == 200, response.data
    assert _zip(response.data).namelist() == ["ab_c/_CON.txt", "x/a.txt", "x/A (1).TXT"]


def _disposition(response: Any) -> str:
    value, options = parse_options_header(response.headers["Content-Disposition"])
    assert value == "attachment"
    return str(options["filename"])  # Werkzeug prefers filename* when present, as RFC 6266 says


@pytest.mark.parametrize(("filename", "header", "shown"), [
    ('12" vinyl.zip', "attachment; filename=\"12_ vinyl.zip\"; filename*=UTF-8''12%22%20vinyl.zip", '12" vinyl.zip'),
    ("inv\u202efdp.exe", 'attachment; filename="invfdp.exe.zip"', "invfdp.exe.zip"),
    ("x.exe", 'attachment; filename="x.exe.zip"', "x.exe.zip"),
    ("a/b.zip", 'attachment; filename="a_b.zip"', "a_b.zip"),
    ("../../x", 'attachment; filename="_.._x.zip"', "_.._x.zip"),
    ("résumé 2024.zip", "attachment; filename=\"r_sum_ 2024.zip\"; filename*=UTF-8''r%C3%A9sum%C3%A9%202024.zip",
     "résumé 2024.zip"),
])
def test_download_filename_in_content_disposition(client: FlaskClient, readme: str, filename: str, header: str,
                                                  shown: str) -> None:
    one_off = client.post("/bundle", json={"filename": filename, "files": [{"src": readme}]})
    assert one_off.status_code == 200, one_off.data
    assert one_off.headers["Content-Disposition"] == header
    assert _disposition(one_off) == shown
    created = client.post("/", json={"filename": filename, "files": [{"src": readme}]})
    assert created.status_code == 201, created.data
    assert created.json["filename"] == filename  # stored as sent
    stored = client.get(f"/{created.json['id']}")
    assert stored.headers["Content-Disposition"] == header
    renamed = client.put(f"/{created.json['id']}/{created.json['secret']}", json={"filename": filename + " 2"})
    assert renamed.status_code == 200, renamed.data
    assert renamed.json["filename"] == filename + " 2"


def test_a_form_can_name_the_zip_with_quotes(client: FlaskClient, readme: str) -> None:
    response = client.post("/bundle", data={"src": [readme], "filename": '12" vinyl'})
    assert response.status_code == 200, response.data
    assert _disposition(response) == '12" vinyl.zip'


def test_a_stored_filename_that_leaves_nothing_downloads_as_bundle_zip(client: FlaskClient, readme: str) -> None:
    # Stored before these rules (or by another version): the download still gets a name.
    with client.application.app_context():
        repository = get_repository()
    for stored, shown in (("..", "bundle.zip"), ("\u202e", "bundle.zip"), ("", "bundle.zip"), ("/", "_.zip")):
        bundle = Bundle.new(filename=stored, files=(FileRef(src=readme),), lifetime_minutes=5)
        repository.create(bundle)
        response = client.get(f"/{bundle.id}")
        assert response.status_code == 200, response.data
        assert _disposition(response) == shown


# -- MAX_FILES on every route that loads a bundle ----------------------------------------------------


# -- real extractors ---------------------------------------------------------------------------------

_RUN = uuid.uuid4().hex[:12]
HOSTILE_DSTS = [
    f"../../../../tmp/zipslip-dotdot-{_RUN}.txt",
    f"/tmp/zipslip-absolute-{_RUN}.txt",
    "C:/C:/Windows/System32/evil.dll",
    "C:x.txt",
    "D:foo/bar.txt",
    "\\\\server\\share\\unc.txt",
    "\\\\?\\C:\\device.txt",
    "．．／．．／．．／fullwidth.txt",
    "‥/‥/‥/leader.txt",
    "..＼..＼backslash.txt",
    "..∕..∕division.txt",
    "..¥..¥yen.txt",
    "a.txt:stream",
    "aux.txt",
    "dir/CON/x.txt",
    "a.txt.",
    "a.txt",
    "A.TXT ",
    "inv\u202efdp.exe",
    "d",
    "d/inner.txt",
]


def test_real_extractors_stay_inside_and_see_windows_safe_names(client: FlaskClient, upstream: UpstreamServer,
                                                                  tmp_path: Path) -> None:
    require_readers(["unzip", "bsdtar", "7z"])
    files = []
    for i, dst in enumerate(HOSTILE_DSTS):
        upstream.add(f"/h/{i}", f"member {i}".encode())
        files.append({"src": upstream.url(f"/h/{i}"), "dst": dst})
    response = client.post("/bundle", json={"files": files})
    assert response.status_code == 200, response.data
    archive = tmp_path / "hostile.zip"
    archive.write_bytes(response.data)
    listed = _zip(response.data).namelist()
    for name in listed:
        _assert_safe(name)
    _assert_extractable(listed)
    commands = {
        "unzip": lambda out: ["unzip", "-o", "-q", str(archive), "-d", str(out)],
        "bsdtar": lambda out: ["bsdtar", "-xf", str(archive), "-C", str(out)],
        "7z": lambda out: ["7z", "x", "-y", "-bd", f"-o{out}", str(archive)],
    }
    for reader, command in commands.items():
        jail = tmp_path / reader / "jail"
        jail.mkdir(parents=True)
        proc = subprocess.run(command(jail), capture_output=True, timeout=120, check=False)
        assert proc.returncode == 0, (reader, proc.stdout, proc.stderr)
        written = sorted(str(path.relative_to(jail)) for path in _walk(jail) if path.is_file())
        assert written == sorted(listed), reader
        assert _walk(tmp_path / reader) == [jail, *_walk(jail)], reader  # nothing next to the jail
        for path in written:  # a Windows extractor would write each of these where it says
            assert os.path.realpath(jail / path).startswith(os.path.realpath(jail) + os.sep)
    for dst in HOSTILE_DSTS[:2]:  # the traversal targets, named uniquely for this run
        assert not Path(dst.replace("../", "").lstrip("/")).is_absolute()
        assert not Path("/" + dst.replace("../", "").lstrip("/")).exists(), dst


def _walk(root: Path) -> list[Path]:
    found = []
    for current, dirs, filenames in os.walk(root):
        dirs.sort()
        found.extend(Path(current) / name for name in sorted([*dirs, *filenames]))
    return found


# -- unique_names against a plain reference --------------------------------------------------------


def _reference_unique_names(given_names: list[str]) -> list[str]:
    """The rules of UniqueNames, written plainly (a node per folder, numbers tried from 1)."""
    nodes: dict[tuple[int, str], int] = {}  # (parent id, key) -> -1 for a file, else the folder's id
    spelled: dict[int, str] = {}  # folder id -> the name it was first given
    moved: dict[tuple[int, str], int] = {}  # a file's (parent id, key) -> the folder paths through it take
    files: dict[tuple[int, str], str] = {}  # a file's (parent id, key) -> its name

    def key(segment: str) -> str:
        return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", segment).casefold())

    def numbered(parent: int, stem: str, ext: str) -> str:
        number = 1
        while (parent, key(f"{stem} ({number}){ext}")) in nodes:
            number += 1
        return f"{stem} ({number}){ext}"

    def new_folder(parent: int, segment: str) -> int:
        folder = nodes[(parent, key(segment))] = len(nodes) + 1
        spelled[folder] = segment
        return folder

    result = []
    for name in given_names:
        *folders, leaf = name.split("/")
        parent, path = 0, []
        for segment in folders:
            at = (parent, key(segment))
            if nodes.get(at) == -1:
                if at not in moved:
                    moved[at] = new_folder(parent, numbered(parent, files[at], ""))
                parent = moved[at]
            else:
                parent = nodes[at] if at in nodes else new_folder(parent, segment)
            path.append(spelled[parent])
        if (parent, key(leaf)) in nodes:
            leaf = numbered(parent, *names._split_extension(leaf))
        nodes[(parent, key(leaf))] = -1
        files[(parent, key(leaf))] = leaf
        result.append("/".join([*path, leaf]))
    return result


_PATHS = st.lists(st.lists(st.sampled_from(["a", "A", "b", "a (1)", "a (2)", "c.txt", "C.TXT", "c (1).txt", "ß", "ss"]),
                           min_size=1, max_size=12).map("/".join), max_size=30)


@settings(max_examples=600, deadline=None)
@given(given_names=_PATHS, walk_budget=st.sampled_from([names.WALK_BUDGET, 1, 2]))
def test_unique_names_match_the_plain_rules(given_names: list[str], walk_budget: int) -> None:
    # A small walk budget makes every lookup start from a known folder near the end of its path.
    unique = UniqueNames(walk_budget)
    assert [unique.add(name) for name in given_names] == _reference_unique_names(given_names)


# -- lengths and the dotless i (attack pass) -------------------------------------------------------


@pytest.mark.parametrize(("raw", "kept_end"), [
    ("a" * 300 + ".txt", ".txt"),
    ("é" * 200 + ".pdf", ".pdf"),  # 2 bytes each: cut between characters, never inside one
    ("d/" + "b" * 400, "b"),
    ("x." + "e" * 300, "e"),  # an "extension" too long to keep is cut like the rest
    ("CON" + " " * 300 + "x.txt", ".txt"),  # a cut that leaves a device name is made harmless again
    ("." * 300 + "x", "_"),  # a cut that leaves only dots
])
def test_every_segment_fits_in_255_bytes(raw: str, kept_end: str) -> None:
    """unzip, bsdtar and 7-Zip fail on a 300-byte name ("File name too long") and skip that file."""
    name = safe_name(raw)
    _assert_safe(name)
    assert all(len(segment.encode()) <= names.MAX_SEGMENT_BYTES for segment in name.split("/"))
    assert name.endswith(kept_end)


def test_numbered_duplicates_of_a_long_name_still_fit() -> None:
    long = safe_name("a" * 300 + ".txt")
    unique = unique_names([long, long, long])
    assert len(set(unique)) == 3
    assert all(len(name.encode()) <= names.MAX_SEGMENT_BYTES and name.endswith(".txt") for name in unique)
    assert unique[1].endswith(" (1).txt") and unique[2].endswith(" (2).txt")


def test_the_dotless_i_is_the_same_name_as_i_on_windows() -> None:
    """NTFS compares upper-cased names: U+0131 upper-cases to "I", though casefold() keeps it apart."""
    assert unique_names(["\u0131.txt", "I.txt", "i.txt"]) == ["\u0131.txt", "I (1).txt", "i (2).txt"]


# -- a file and a folder of one name -------------------------------------------------------------


def test_a_file_never_shares_its_name_with_a_folder() -> None:
    names = unique_names(["docs", "docs/b.txt", "a/b.txt", "A", "x/y.txt"])
    assert names == ["docs", "docs (1)/b.txt", "a/b.txt", "A (1)", "x/y.txt"]


def test_zip_with_file_and_folder_of_one_name_extracts(client: FlaskClient, upstream: UpstreamServer) -> None:
    upstream.add("/a.txt", b"a")
    response = client.post("/bundle", json={"files": [{"src": upstream.url("/a.txt"), "dst": "docs"},
                                                      {"src": upstream.url("/a.txt"), "dst": "docs/b.txt"}]})
    assert zipfile.ZipFile(io.BytesIO(response.data)).namelist() == ["docs", "docs (1)/b.txt"]
