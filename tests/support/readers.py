"""Check zip archives with real, independent readers (Python, Info-ZIP, 7-Zip, libarchive, Java).

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from . import ci

# Debian packages providing every reader below; .ci/run installs exactly these.
# default-jdk-headless is usually preinstalled but is listed so a bare machine gets java too.
DEBIAN_PACKAGES: Final[tuple[str, ...]] = ("unzip", "p7zip-full", "libarchive-tools", "default-jdk-headless")

# Readers check_zip runs by default. "java-stream" (ZipInputStream) is opt-in: it cannot
# read STORED entries that use a data descriptor, which streamed zips legitimately contain.
ALL: Final[tuple[str, ...]] = ("zipfile", "unzip", "7z", "bsdtar", "java")
KNOWN: Final[tuple[str, ...]] = (*ALL, "java-stream")

# Readers that reliably reject any truncation of a zip (the end record is gone).
TRUNCATION_READERS: Final[tuple[str, ...]] = ("zipfile", "unzip", "7z", "java")

# bsdtar -xOf concatenates every member to stdout, so only compare contents below this size.
SMALL_ARCHIVE_BYTES: Final = 64 * 1024 * 1024

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
}
_PACKAGE_OF: Final[dict[str, str]] = {
    "unzip": "unzip",
    "7z": "p7zip-full",
    "bsdtar": "libarchive-tools",
    "java": "default-jdk-headless",
}

PathLike = str | os.PathLike[str]
CheckZip = Callable[..., None]


@dataclass(frozen=True)
class Entry:
    """One archive member as a reader saw it; size/crc are None when the reader does not say."""

    name: str
    size: int | None = None
    crc: int | None = None


# --------------------------------------------------------------------------- availability


def _binary(reader: str) -> str | None:
    """Return the path of the binary serving reader, or None when none is installed."""
    for name in _BINARIES[reader]:
        found = shutil.which(name)
        if found:
            return found
    return None


def _validate(readers: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(readers)
    unknown = [r for r in chosen if r not in KNOWN]
    if unknown:
        raise ValueError(f"unknown zip readers {unknown}; known: {list(KNOWN)}")
    return chosen


def missing_readers(readers: Iterable[str] = ALL) -> list[str]:
    """Return the reader binaries (e.g. "7z", "java") that are not installed."""
    missing: list[str] = []
    for reader in _validate(readers):
        if _BINARIES[reader] and _binary(reader) is None:
            name = _BINARIES[reader][0]
            if name not in missing:
                missing.append(name)
    return missing


def require_readers(readers: Iterable[str] = ALL) -> None:
    """Skip the test when a reader is missing, or fail it on CI where skipping would hide gaps."""
    missing = missing_readers(readers)
    if not missing:
        return
    packages = " ".join(sorted({_PACKAGE_OF[m] for m in missing}))
    ci.missing(f"zip readers not installed: {', '.join(missing)} (apt-get install -y {packages})",
               "CI must install tests.support.readers.DEBIAN_PACKAGES")


@pytest.fixture(scope="session")
def zip_readers() -> CheckZip:
    """Fixture: ensure every default reader is installed, then hand back :func:`check_zip`."""
    require_readers(ALL)
    return check_zip


# --------------------------------------------------------------------------- public checks


def check_zip(
    path: PathLike,
    expected: Mapping[str, bytes] | None = None,
    *,
    readers: Iterable[str] = ALL,
) -> None:
    """Assert every reader accepts the zip and, if given, sees exactly ``expected`` in order."""
    archive = Path(path)
    problems: list[str] = []
    for reader in _validate(readers):
        problems.extend(f"[{reader}] {p}" for p in _READERS[reader](archive, expected))
    if problems:
        raise AssertionError(f"zip check failed for {archive}:\n" + "\n".join(problems))


def expect_truncated(path: PathLike, *, readers: Iterable[str] = TRUNCATION_READERS) -> None:
    """Assert every reader rejects the (truncated or otherwise broken) archive."""
    archive = Path(path)
    chosen = _validate(readers)
    missing = missing_readers(chosen)
    # A missing reader "fails" every archive, which would make this check pass vacuously.
    assert not missing, f"cannot check truncation, readers not installed: {', '.join(missing)}"
    accepted = [r for r in chosen if not _READERS[r](archive, None)]
    if accepted:
        raise AssertionError(f"broken archive {archive} was accepted by: {', '.join(accepted)}")


# --------------------------------------------------------------------------- comparison


def _expected_entries(expected: Mapping[str, bytes]) -> list[Entry]:
    return [Entry(name, len(data), zlib.crc32(data)) for name, data in expected.items()]


def _short(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} total)" if len(items) > limit else "")


def _compare(
    got: list[Entry],
    expected: Mapping[str, bytes] | None,
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


def _read_pyzipfile(archive: Path, expected: Mapping[str, bytes] | None) -> list[str]:
    """Python zipfile: testzip() CRC-checks every member, then compare names and bytes."""
    try:
        with zipfile.ZipFile(archive) as zf:
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
            if problems:
                return problems
            for name, data in expected.items():
                if zf.read(name) != data:
                    problems.append(f"{name!r}: content differs from expected")
            return problems
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        return [f"{type(exc).__name__}: {exc}"]


def _read_unzip(archive: Path, expected: Mapping[str, bytes] | None) -> list[str]:
    """Info-ZIP: ``unzip -t`` tests every member; any warning exit status (1) counts as failure."""
    binary = _binary("unzip")
    if binary is None:
        return ["unzip not installed (apt-get install -y unzip)"]
    proc = _run([binary, "-t", "-qq", str(archive)])
    if proc.returncode == 1 and b"zipfile is empty" in proc.stdout + proc.stderr:
        # Info-ZIP warns (exit 1) on a valid archive with no members; -Z1 would fail likewise.
        return _compare([], expected)
    if proc.returncode != 0:
        return [_failed(proc)]
    if expected is None:
        return []
    listing = _run([binary, "-Z1", str(archive)])
    if listing.returncode != 0:
        return [_failed(listing)]
    names = listing.stdout.decode("utf-8", "replace").splitlines()
    return _compare([Entry(n) for n in names], expected)


def _read_7z(archive: Path, expected: Mapping[str, bytes] | None) -> list[str]:
    """7-Zip: ``7z t`` as zip; 7z exits 0 on warnings (e.g. trailing junk), so scan its output too."""
    binary = _binary("7z")
    if binary is None:
        return ["7z not installed (apt-get install -y p7zip-full, or 7zip for 7zz)"]
    proc = _run([binary, "t", "-tzip", "-y", "-bd", str(archive)])
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return [_failed(proc)]
    if b"WARNING" in output.upper() or b"Everything is Ok" not in output:
        return [_failed(proc, "warnings or no 'Everything is Ok'")]
    if expected is None:
        return []
    listing = _run([binary, "l", "-tzip", "-slt", "-ba", str(archive)])
    if listing.returncode != 0:
        return [_failed(listing)]
    # 7z drops the trailing slash of directory entries, so compare names without it.
    return _compare(_parse_7z_slt(listing.stdout), expected, name_key=lambda n: n.rstrip("/"))


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


def _read_bsdtar(archive: Path, expected: Mapping[str, bytes] | None) -> list[str]:
    """libarchive: ``bsdtar -tf`` lists; ``-xOf`` re-reads contents for small archives."""
    binary = _binary("bsdtar")
    if binary is None:
        return ["bsdtar not installed (apt-get install -y libarchive-tools)"]
    listing = _run([binary, "-tf", str(archive)])
    if listing.returncode != 0 or listing.stderr.strip():
        return [_failed(listing, "" if listing.returncode else "warnings on stderr")]
    if expected is None:
        return []
    names = listing.stdout.decode("utf-8", "replace").splitlines()
    problems = _compare([Entry(n) for n in names], expected)
    want = b"".join(expected.values())
    if problems or len(want) > SMALL_ARCHIVE_BYTES:
        return problems
    extract = _run([binary, "-xOf", str(archive)])
    if extract.returncode != 0 or extract.stderr.strip():
        return [_failed(extract, "" if extract.returncode else "warnings on stderr")]
    if extract.stdout != want:
        return [f"-xOf contents differ from expected at byte {_first_difference(extract.stdout, want)}"]
    return []


def _first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def _read_java(archive: Path, expected: Mapping[str, bytes] | None) -> list[str]:
    """java.util.zip.ZipFile: central directory, every entry read fully and CRC-checked."""
    return _run_zipcheck("zipfile", archive, expected)


def _read_java_stream(archive: Path, expected: Mapping[str, bytes] | None) -> list[str]:
    """java.util.zip.ZipInputStream: local headers only, as a streaming consumer would."""
    return _run_zipcheck("zipinputstream", archive, expected)


_READERS: Final[dict[str, Callable[[Path, Mapping[str, bytes] | None], list[str]]]] = {
    "zipfile": _read_pyzipfile,
    "unzip": _read_unzip,
    "7z": _read_7z,
    "bsdtar": _read_bsdtar,
    "java": _read_java,
    "java-stream": _read_java_stream,
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


def _run_zipcheck(mode: str, archive: Path, expected: Mapping[str, bytes] | None) -> list[str]:
    if _binary("java") is None:
        return ["java not installed (apt-get install -y default-jdk-headless)"]
    proc = _run([*_zipcheck_command(mode), str(archive)])
    if proc.returncode != 0:
        return [_failed(proc)]
    entries: list[Entry] = []
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("ENTRY\t"):
            _, size, crc, hex_name, _ = line.split("\t", 4)
            entries.append(Entry(bytes.fromhex(hex_name).decode("utf-8", "replace"), int(size), int(crc, 16)))
    return _compare(entries, expected)
