"""Check zip archives with real, independent readers (Python, Info-ZIP, 7-Zip, libarchive, Java,
yauzl 2.x and 3.x from npm, Go's archive/zip).

Import ``zip_readers`` into conftest.py to get a fixture that skips locally (fails on CI)
when a reader is not installed and otherwise returns :func:`check_zip`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from . import ci

# Debian packages providing every reader below; .ci/run installs exactly these.
# default-jdk-headless is usually preinstalled but is listed so a bare machine gets java too.
# nodejs runs yauzl (npm comes with it from NodeSource; Debian's own nodejs needs the npm package too,
# which tests/support/system_deps.py adds when `npm` is missing); golang-go builds the Go checker.
DEBIAN_PACKAGES: Final[tuple[str, ...]] = (
    "unzip", "p7zip-full", "libarchive-tools", "default-jdk-headless", "nodejs", "golang-go",
)
# yauzl (the reader inside extract-zip, so inside many Electron and Node tools), both majors side by
# side under npm aliases; 2.x is the strictest about end records. Exact versions: the cache is keyed by them.
NPM_PACKAGES: Final[tuple[str, ...]] = ("yauzl2@npm:yauzl@2.10.0", "yauzl3@npm:yauzl@3.4.0")

# Readers check_zip runs by default. "java-stream" (ZipInputStream) is opt-in: it cannot
# read STORED entries that use a data descriptor, which streamed zips legitimately contain.
ALL: Final[tuple[str, ...]] = ("zipfile", "unzip", "7z", "bsdtar", "java", "yauzl2", "yauzl3", "go")
KNOWN: Final[tuple[str, ...]] = (*ALL, "java-stream")

# Readers that reliably reject any truncation of a zip (the end record is gone).
TRUNCATION_READERS: Final[tuple[str, ...]] = ("zipfile", "unzip", "7z", "java", "yauzl2", "yauzl3", "go")

# Generous: multi-GB archives are tested too, and a hung reader must not hang CI forever.
READER_TIMEOUT_S: Final = 1800.0

_ZIPCHECK_SOURCE: Final = Path(__file__).with_name("ZipCheck.java")

# Binaries that can serve each reader, in order of preference.
_BINARIES: Final[dict[str, tuple[str, ...]]] = {
    "zipfile": (),
    "unzip": ("unzip",),
    "7z": ("7z", "7zz", "7za"),  # p7zip-full ships 7z; Debian's newer 7zip package ships 7zz
    "bsdtar": ("bsdtar",),
    "java": ("java",),
    "java-stream": ("java",),
    "yauzl2": ("node",),
    "yauzl3": ("node",),
    "go": ("go",),
}
# How to get each missing piece (a binary name, or "yauzl" for the npm packages).
_INSTALL_HINT: Final[dict[str, str]] = {
    "unzip": "apt-get install -y unzip",
    "7z": "apt-get install -y p7zip-full",
    "bsdtar": "apt-get install -y libarchive-tools",
    "java": "apt-get install -y default-jdk-headless",
    "node": "apt-get install -y nodejs npm",
    "go": "apt-get install -y golang-go",
    "yauzl": "python tests/support/system_deps.py (npm install into the test cache)",
}

_YAUZL_SCRIPT: Final = Path(__file__).with_name("yauzl_check.js")
_GO_SOURCE: Final = Path(__file__).with_name("zipcheck.go")

PathLike = str | os.PathLike[str]
CheckZip = Callable[..., None]


@dataclass(frozen=True)
class Entry:
    """One archive member as a reader saw it; size/crc are None when the reader does not say."""

    name: str
    size: int | None = None
    crc: int | None = None


# What a check expects: members' bytes by name, or entries (name, size, CRC-32) in order; None: anything.
Expected = Mapping[str, bytes] | Sequence[Entry] | None


# --------------------------------------------------------------------------- availability


def _binary(reader: str) -> str | None:
    """Return the path of the binary serving reader, or None when none is installed."""
    for name in _BINARIES[reader]:
        found = shutil.which(name)
        if found:
            return found
    return None


def cache_dir() -> Path:
    """The directory the test set-up owns for readers it installs or builds (npm packages, Go binary).

    $ZIPSTREAM_TEST_CACHE, else $XDG_CACHE_HOME/zipstream-tests, else ~/.cache/zipstream-tests.
    """
    explicit = os.environ.get("ZIPSTREAM_TEST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zipstream-tests"


def yauzl_dir() -> Path:
    """Where NPM_PACKAGES are installed (node_modules/yauzl2, node_modules/yauzl3), keyed by the list."""
    digest = hashlib.sha256(" ".join(NPM_PACKAGES).encode()).hexdigest()[:12]
    return cache_dir() / f"yauzl-{digest}"


def _yauzl_installed() -> bool:
    modules = yauzl_dir() / "node_modules"
    return all((modules / spec.split("@", 1)[0] / "package.json").is_file() for spec in NPM_PACKAGES)


def install_yauzl() -> str:
    """Install NPM_PACKAGES into yauzl_dir() unless there (the one network step; run by system_deps).

    Returns what was done, for the set-up's log; raises RuntimeError when npm is absent or fails.
    """
    if _yauzl_installed():
        return f"yauzl present in {yauzl_dir()}"
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not installed (apt-get install -y nodejs npm)")
    target = yauzl_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Install into a private dir and rename, so a concurrent run never sees half a node_modules.
    staging = Path(tempfile.mkdtemp(prefix="yauzl-install-", dir=target.parent))
    proc = _run([npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund", "--no-save",
                 "--loglevel=error", *NPM_PACKAGES])
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(_failed(proc, "npm install failed"))
    try:
        staging.rename(target)
    except OSError:  # another run won the race; its copy is the same versions
        shutil.rmtree(staging, ignore_errors=True)
    return f"yauzl installed in {target}"


def go_checker() -> Path | None:
    """Build tests/support/zipcheck.go once into the cache (keyed by source and Go version); None without go.

    Standard library only, built offline (GOPROXY=off, GOTOOLCHAIN=local, no module): never any network.
    """
    go = shutil.which("go")
    if go is None:
        return None
    version = _run([go, "version"]).stdout
    digest = hashlib.sha256(_GO_SOURCE.read_bytes() + version).hexdigest()[:16]
    binary = cache_dir() / f"zipcheck-go-{digest}"
    if binary.is_file():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="zipcheck-go-", dir=binary.parent))
    env = {**_env(), "GOCACHE": str(cache_dir() / "go-build"), "GOPATH": str(cache_dir() / "gopath"),
           "GO111MODULE": "off", "GOPROXY": "off", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    proc = subprocess.run([go, "build", "-o", str(staging / "zipcheck"), str(_GO_SOURCE)], env=env,
                          capture_output=True, timeout=READER_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(_failed(proc, "go build of tests/support/zipcheck.go failed"))
    try:
        (staging / "zipcheck").rename(binary)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return binary


def _validate(readers: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(readers)
    unknown = [r for r in chosen if r not in KNOWN]
    if unknown:
        raise ValueError(f"unknown zip readers {unknown}; known: {list(KNOWN)}")
    return chosen


def missing_readers(readers: Iterable[str] = ALL) -> list[str]:
    """Return the reader binaries (e.g. "7z", "java") or packages ("yauzl") that are not installed."""
    missing: list[str] = []
    for reader in _validate(readers):
        if _BINARIES[reader] and _binary(reader) is None:
            name = _BINARIES[reader][0]
            if name not in missing:
                missing.append(name)
        elif reader.startswith("yauzl") and not _yauzl_installed() and "yauzl" not in missing:
            missing.append("yauzl")
    return missing


def require_readers(readers: Iterable[str] = ALL) -> None:
    """Skip the test when a reader is missing, or fail it on CI where skipping would hide gaps."""
    missing = missing_readers(readers)
    if not missing:
        return
    hints = "; ".join(sorted({_INSTALL_HINT[m] for m in missing}))
    ci.missing(f"zip readers not installed: {', '.join(missing)} ({hints})",
               "CI must run tests/support/system_deps.py (make unit does)")


@pytest.fixture(scope="session")
def zip_readers() -> CheckZip:
    """Fixture: ensure every default reader is installed, then hand back :func:`check_zip`."""
    require_readers(ALL)
    return check_zip


# --------------------------------------------------------------------------- public checks


def check_zip(
    path: PathLike,
    expected: Expected = None,
    *,
    readers: Iterable[str] = ALL,
    listing: bool = False,
) -> None:
    """Assert every reader accepts the zip and, if given, sees exactly ``expected`` in order.

    ``expected`` is either the members' bytes by name, or (for archives too big to hold in memory)
    a sequence of :class:`Entry` with name, size and CRC-32. By default each reader reads every
    member's data and checks its CRC; ``listing=True`` asks each only for the central directory
    (names, sizes, CRCs as recorded), the cheap check for multi-GB archives.
    """
    archive = Path(path)
    problems: list[str] = []
    for reader in _validate(readers):
        problems.extend(f"[{reader}] {p}" for p in _READERS[reader](archive, expected, listing))
    if problems:
        raise AssertionError(f"zip check failed for {archive}:\n" + "\n".join(problems))


def expect_truncated(path: PathLike, *, readers: Iterable[str] = TRUNCATION_READERS) -> None:
    """Assert every reader rejects the (truncated or otherwise broken) archive."""
    archive = Path(path)
    chosen = _validate(readers)
    missing = missing_readers(chosen)
    # A missing reader "fails" every archive, which would make this check pass vacuously.
    assert not missing, f"cannot check truncation, readers not installed: {', '.join(missing)}"
    accepted = [r for r in chosen if not _READERS[r](archive, None, False)]
    if accepted:
        raise AssertionError(f"broken archive {archive} was accepted by: {', '.join(accepted)}")


# --------------------------------------------------------------------------- comparison


def _expected_entries(expected: Mapping[str, bytes] | Sequence[Entry]) -> list[Entry]:
    if isinstance(expected, Mapping):
        return [Entry(name, len(data), zlib.crc32(data)) for name, data in expected.items()]
    return list(expected)


def _short(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} total)" if len(items) > limit else "")


def _compare(
    got: list[Entry],
    expected: Expected,
    *,
    name_key: Callable[[str], str] = lambda n: n,
) -> list[str]:
    """Return problems comparing a reader's entries with ``expected`` (names, order, size, CRC)."""
    if expected is None:
        return []
    want = _expected_entries(expected)
    got_names = [name_key(e.name) for e in got]
    want_names = [name_key(e.name) for e in want]
    if got_names != want_names:
        if sorted(got_names) == sorted(want_names):
            return [f"entries out of order: got [{_short(got_names)}], want [{_short(want_names)}]"]
        extra = [n for n in got_names if n not in set(want_names)]
        lacking = [n for n in want_names if n not in set(got_names)]
        return [
            f"entry names differ: unexpected [{_short(extra)}], missing [{_short(lacking)}]"
            f" (got {len(got_names)} entries, want {len(want_names)})"
        ]
    problems: list[str] = []
    for g, w in zip(got, want, strict=True):
        if g.size is not None and g.size != w.size:
            problems.append(f"{w.name!r}: size {g.size} != expected {w.size}")
        elif g.crc is not None and g.crc != w.crc:
            problems.append(f"{w.name!r}: CRC32 {g.crc:08x} != expected {w.crc:08x}")
    return problems


def _duplicates(names: list[str]) -> list[str]:
    seen: set[str] = set()
    dupes: list[str] = []
    for name in names:
        if name in seen:
            dupes.append(name)
        seen.add(name)
    return dupes


# --------------------------------------------------------------------------- subprocess helpers


def _env() -> dict[str, str]:
    # A UTF-8 locale so readers print non-ASCII member names as UTF-8 rather than escapes.
    return {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}


def _run(cmd: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,  # never let a reader wait for a password or prompt
        capture_output=True,
        env=_env(),
        timeout=READER_TIMEOUT_S,
        check=False,
    )


def _tail(data: bytes, limit: int = 2000) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _failed(proc: subprocess.CompletedProcess[bytes], why: str = "") -> str:
    cmd = " ".join(str(a) for a in proc.args)
    reason = why or f"exit status {proc.returncode}"
    return f"{reason}: $ {cmd}\n{_tail(proc.stdout + proc.stderr)}"


# --------------------------------------------------------------------------- readers


def _read_pyzipfile(archive: Path, expected: Expected, listing: bool) -> list[str]:
    """Python zipfile: testzip() CRC-checks every member (not when listing), then names and bytes."""
    try:
        with zipfile.ZipFile(archive) as zf:
            if not listing:
                bad = zf.testzip()
                if bad is not None:
                    return [f"testzip(): bad CRC or header in member {bad!r}"]
            problems: list[str] = []
            dupes = _duplicates(zf.namelist())
            if dupes:
                # Valid zip, but extractors silently overwrite one member with another.
                problems.append(f"duplicate member names [{_short(dupes)}]")
            if expected is None:
                return problems
            entries = [Entry(i.filename, i.file_size, i.CRC) for i in zf.infolist()]
            problems += _compare(entries, expected)
            if problems or listing or not isinstance(expected, Mapping):
                return problems
            for name, data in expected.items():
                if zf.read(name) != data:
                    problems.append(f"{name!r}: content differs from expected")
            return problems
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        return [f"{type(exc).__name__}: {exc}"]


def _read_unzip(archive: Path, expected: Expected, listing: bool) -> list[str]:
    """Info-ZIP: ``unzip -t`` tests every member (skipped when listing); ``unzip -v`` lists.

    Any warning exit status (1) counts as failure.
    """
    binary = _binary("unzip")
    if binary is None:
        return ["unzip not installed (apt-get install -y unzip)"]
    if not listing:
        proc = _run([binary, "-t", "-qq", str(archive)])
        if proc.returncode == 1 and b"zipfile is empty" in proc.stdout + proc.stderr:
            # Info-ZIP warns (exit 1) on a valid archive with no members; -v would fail likewise.
            return _compare([], expected)
        if proc.returncode != 0:
            return [_failed(proc)]
    # -v reads the central directory only: length, method, size, ratio, date, time, CRC, name.
    table = _run([binary, "-v", str(archive)])
    if table.returncode == 1 and b"zipfile is empty" in table.stdout + table.stderr:
        return _compare([], expected)
    if table.returncode != 0:
        return [_failed(table)]
    return _compare(_parse_unzip_v(table.stdout), expected)


def _parse_unzip_v(output: bytes) -> list[Entry]:
    """The entries of ``unzip -v``: the rows between its two dashed rules."""
    entries: list[Entry] = []
    inside = False
    for line in output.decode("utf-8", "replace").splitlines():
        if line.startswith("--------"):
            if inside:
                break
            inside = True
            continue
        if inside:
            fields = line.split(None, 7)
            entries.append(Entry(fields[7], int(fields[0]), int(fields[6], 16)))
    return entries


def _read_7z(archive: Path, expected: Expected, listing: bool) -> list[str]:
    """7-Zip: ``7z t`` as zip (skipped when listing); 7z exits 0 on warnings, so scan its output too."""
    binary = _binary("7z")
    if binary is None:
        return ["7z not installed (apt-get install -y p7zip-full, or 7zip for 7zz)"]
    if not listing:
        proc = _run([binary, "t", "-tzip", "-y", "-bd", str(archive)])
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            return [_failed(proc)]
        if b"WARNING" in output.upper() or b"Everything is Ok" not in output:
            return [_failed(proc, "warnings or no 'Everything is Ok'")]
        if expected is None:
            return []
    table = _run([binary, "l", "-tzip", "-slt", "-ba", str(archive)])
    if table.returncode != 0:
        return [_failed(table)]
    if listing and (b"WARNING" in table.stdout.upper() + table.stderr.upper()):
        return [_failed(table, "warnings")]
    # 7z drops the trailing slash of directory entries, so compare names without it.
    return _compare(_parse_7z_slt(table.stdout), expected, name_key=lambda n: n.rstrip("/"))


def _parse_7z_slt(output: bytes) -> list[Entry]:
    """Parse ``7z l -slt -ba`` blocks ("Path = ...", "Size = ...", "CRC = ...")."""
    entries: list[Entry] = []
    block: dict[str, str] = {}
    for line in [*output.decode("utf-8", "replace").splitlines(), ""]:
        if line.strip() == "":
            if "Path" in block:
                crc = block.get("CRC", "")
                entries.append(Entry(block["Path"], int(block.get("Size") or 0), int(crc, 16) if crc else 0))
            block = {}
            continue
        key, sep, value = line.partition(" = ")
        if sep:
            block[key.strip()] = value
        elif line.endswith(" ="):
            block[line[:-2].strip()] = ""
    return entries


def _read_bsdtar(archive: Path, expected: Expected, listing: bool) -> list[str]:
    """libarchive: ``bsdtar -tf`` lists; unless listing, ``-xOf`` re-reads every member's bytes.

    -xOf concatenates the members on stdout; it is read as a stream and cut at the expected sizes,
    so each member's CRC is checked without holding the archive in memory.
    """
    binary = _binary("bsdtar")
    if binary is None:
        return ["bsdtar not installed (apt-get install -y libarchive-tools)"]
    table = _run([binary, "-tf", str(archive)])
    if table.returncode != 0 or table.stderr.strip():
        return [_failed(table, "" if table.returncode else "warnings on stderr")]
    if expected is None:
        return []
    names = table.stdout.decode("utf-8", "replace").splitlines()
    problems = _compare([Entry(n) for n in names], expected)
    if problems or listing:
        return problems
    return _bsdtar_contents(binary, archive, _expected_entries(expected))


def _bsdtar_contents(binary: str, archive: Path, want: list[Entry]) -> list[str]:
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen([binary, "-xOf", str(archive)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=errors, env=_env())
        assert proc.stdout is not None
        problems: list[str] = []
        try:
            for entry in want:
                remaining, crc = entry.size or 0, 0
                while remaining:
                    block = proc.stdout.read(min(remaining, 1 << 20))
                    if not block:
                        break
                    crc = zlib.crc32(block, crc)
                    remaining -= len(block)
                if remaining:
                    problems.append(f"-xOf: {entry.name!r} ended {remaining} bytes short")
                    break
                if crc != entry.crc:
                    problems.append(f"-xOf: {entry.name!r} CRC32 {crc:08x} != expected {entry.crc or 0:08x}")
            extra = proc.stdout.read(1)
            if extra and not problems:
                problems.append("-xOf: more bytes than the expected members")
        finally:
            proc.stdout.close()
            returncode = proc.wait(timeout=READER_TIMEOUT_S)
        errors.seek(0)
        stderr = errors.read()
    if returncode != 0 or stderr.strip():
        problems.insert(0, f"-xOf exit status {returncode}: {_tail(stderr)}")
    return problems


def _read_java(archive: Path, expected: Expected, listing: bool) -> list[str]:
    """java.util.zip.ZipFile: central directory, every entry read fully and CRC-checked (unless listing)."""
    return _run_zipcheck("list" if listing else "zipfile", archive, expected)


def _read_java_stream(archive: Path, expected: Expected, listing: bool) -> list[str]:
    """java.util.zip.ZipInputStream: local headers only, as a streaming consumer would."""
    return _run_zipcheck("zipinputstream", archive, expected)


def _read_yauzl(module: str) -> Callable[[Path, Expected, bool], list[str]]:
    """yauzl (module yauzl2 or yauzl3) through tests/support/yauzl_check.js: lists, or reads and CRC-checks."""

    def read(archive: Path, expected: Expected, listing: bool) -> list[str]:
        node = _binary(module)
        if node is None or not _yauzl_installed():
            return [f"{module} not installed ({_INSTALL_HINT['yauzl']})"]
        env = {**_env(), "NODE_PATH": str(yauzl_dir() / "node_modules")}
        proc = subprocess.run([node, str(_YAUZL_SCRIPT), module, "list" if listing else "read", str(archive)],
                              stdin=subprocess.DEVNULL, capture_output=True, env=env,
                              timeout=READER_TIMEOUT_S, check=False)
        return _checker_verdict(proc, expected)

    return read


def _read_go(archive: Path, expected: Expected, listing: bool) -> list[str]:
    """Go's archive/zip through tests/support/zipcheck.go: lists, or reads every member (Go checks CRCs)."""
    binary = go_checker()
    if binary is None:
        return [f"go not installed ({_INSTALL_HINT['go']})"]
    return _checker_verdict(_run([str(binary), "list" if listing else "read", str(archive)]), expected)


def _checker_verdict(proc: subprocess.CompletedProcess[bytes], expected: Expected) -> list[str]:
    """Problems from a checker printing ENTRY size crc-hex name-hex lines (ZipCheck, yauzl, Go)."""
    if proc.returncode != 0:
        return [_failed(proc)]
    entries: list[Entry] = []
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("ENTRY\t"):
            _, size, crc, hex_name = line.split("\t")[:4]
            entries.append(Entry(bytes.fromhex(hex_name).decode("utf-8", "replace"), int(size), int(crc, 16)))
    return _compare(entries, expected)


_READERS: Final[dict[str, Callable[[Path, Expected, bool], list[str]]]] = {
    "zipfile": _read_pyzipfile,
    "unzip": _read_unzip,
    "7z": _read_7z,
    "bsdtar": _read_bsdtar,
    "java": _read_java,
    "java-stream": _read_java_stream,
    "yauzl2": _read_yauzl("yauzl2"),
    "yauzl3": _read_yauzl("yauzl3"),
    "go": _read_go,
}


# --------------------------------------------------------------------------- Java launcher

# Client VM settings: the checker is short-lived, so startup time dominates.
_JVM_FLAGS: Final = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
_compiled_dir: Path | None = None


def _zipcheck_command(mode: str) -> list[str]:
    """Java command running ZipCheck; precompiled class (~0.1 s) when javac exists, else source launch."""
    java = _binary("java")
    assert java is not None, "java not installed (apt-get install -y default-jdk-headless)"
    classes = _compiled_zipcheck()
    if classes is not None:
        return [java, *_JVM_FLAGS, "-cp", str(classes), "ZipCheck", mode]
    # Single-file source launch compiles in memory every time (~0.5 s more per call).
    return [java, *_JVM_FLAGS, str(_ZIPCHECK_SOURCE), mode]


def _compiled_zipcheck() -> Path | None:
    """Compile ZipCheck.java once into a cache dir keyed by the source hash; None if javac is absent."""
    global _compiled_dir
    if _compiled_dir is not None:
        return _compiled_dir
    javac = shutil.which("javac")
    if javac is None:
        return None
    digest = hashlib.sha256(_ZIPCHECK_SOURCE.read_bytes() + javac.encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"zipstream-zipcheck-{os.getuid()}-{digest}"
    if not (target / "ZipCheck.class").is_file():
        # Compile into a private dir and rename, so parallel test workers never see half a class.
        staging = Path(tempfile.mkdtemp(prefix="zipcheck-build-"))
        proc = _run([javac, "-d", str(staging), str(_ZIPCHECK_SOURCE)])
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            return None
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    _compiled_dir = target
    return target


def _run_zipcheck(mode: str, archive: Path, expected: Expected) -> list[str]:
    if _binary("java") is None:
        return ["java not installed (apt-get install -y default-jdk-headless)"]
    return _checker_verdict(_run([*_zipcheck_command(mode), str(archive)]), expected)
