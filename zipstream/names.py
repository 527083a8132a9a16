"""Entry names: derive them from a src, make them safe to extract anywhere, make them unique."""

from __future__ import annotations

import posixpath
import unicodedata
from collections.abc import Callable, Iterable
from urllib.parse import unquote, urlsplit

# Extensions that should stay whole when "(1)" is inserted: "a.tar.gz" -> "a (1).tar.gz".
_DOUBLE_EXTENSIONS = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tar.lz", ".tar.z")


def _is_control(char: str) -> bool:
    # Cc covers C0/C1 controls (NUL, ESC, DEL...); bidi overrides (Cf) can disguise an extension.
    return unicodedata.category(char) == "Cc" or char in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def safe_name(name: str) -> str:
    """`name` made safe to extract: '/' separators, no absolute path, no '.'/'..', no controls.

    Returns "" when nothing is left; callers decide what an empty name means.
    """
    cleaned = "".join(char for char in name.replace("\\", "/") if not _is_control(char))
    parts = [part.strip() for part in cleaned.split("/")]
    kept = [part for part in parts if part not in ("", ".", "..")]
    # Windows drive letters ("C:") would make an absolute path on extraction.
    if kept and len(kept[0]) == 2 and kept[0][1] == ":" and kept[0][0].isalpha():
        kept = kept[1:]
    return "/".join(kept)


def name_from_src(src: str) -> str:
    """The default entry name: the src's path without scheme, host, query or leading '/'.

    For s3:// srcs the path is the key (taken literally, no percent-decoding); for URLs it is
    the percent-decoded URL path.
    """
    parts = urlsplit(src)
    if parts.scheme == "s3":
        key = src.split("://", 1)[1].split("/", 1)
        return key[1] if len(key) == 2 else ""
    if parts.scheme == "file":
        return unquote(parts.path)
    return unquote(parts.path, errors="replace")


def _split_extension(name: str) -> tuple[str, str]:
    directory, base = posixpath.split(name)
    lowered = base.lower()
    for double in _DOUBLE_EXTENSIONS:
        if lowered.endswith(double) and len(base) > len(double):
            stem, ext = base[: -len(double)], base[-len(double):]
            break
    else:
        stem, ext = posixpath.splitext(base)
    return posixpath.join(directory, stem) if directory else stem, ext


def _parents(name: str) -> list[str]:
    """The folders `name` sits in, outermost first: "a/b/c.txt" -> ["a", "a/b"]."""
    parts = name.split("/")[:-1]
    return ["/".join(parts[: depth + 1]) for depth in range(len(parts))]


def unique_names(names: Iterable[str]) -> list[str]:
    """The names in order, later duplicates renamed `name (1).ext`, `name (2).ext`, ...

    Compared case-insensitively (and Unicode-normalised) because Windows and macOS extract
    "A.txt" and "a.txt" to the same file. A file may not share its name with a folder either
    ("docs" and "docs/b.txt" cannot both be extracted): the later one is renamed — the file, or
    the folder segment of the later path ("docs (1)/b.txt").
    """
    files: set[str] = set()
    folders: set[str] = set()
    result: list[str] = []

    def key(candidate: str) -> str:
        return unicodedata.normalize("NFC", candidate).casefold()

    for name in names:
        candidate = name
        while True:
            clash = next((parent for parent in _parents(candidate) if key(parent) in files), None)
            if clash is not None:  # a folder of this path is already a file: rename that folder
                candidate = _numbered(clash, lambda c: key(c) in files or key(c) in folders, keep_ext=False) \
                    + candidate[len(clash):]
                continue
            if key(candidate) in files or key(candidate) in folders:
                candidate = _numbered(candidate, lambda c: key(c) in files or key(c) in folders, keep_ext=True)
                continue
            break
        files.add(key(candidate))
        folders.update(key(parent) for parent in _parents(candidate))
        result.append(candidate)
    return result


def _numbered(name: str, taken: Callable[[str], bool], keep_ext: bool) -> str:
    """`name (1)`, `name (2)`, ... (before the extension when keep_ext): the first one not taken."""
    stem, ext = _split_extension(name) if keep_ext else (name, "")
    counter = 1
    while taken(candidate := f"{stem} ({counter}){ext}"):
        counter += 1
    return candidate
