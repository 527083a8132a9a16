"""Entry names: derive them from a src, make them safe to extract anywhere, make them unique.

Also the zip's own download name (`download_filename`). One character pipeline serves both, so a name
that is safe inside the zip is safe as the zip's name too.

Rules come from Microsoft's "Naming Files, Paths, and Namespaces" (reserved characters and device
names, trailing dots and spaces, drive, UNC and `\\\\?\\` / `\\\\.\\` prefixes), Unicode UAX #15 (NFKC)
and UAX #9 (bidi controls), and the "best fit" conversion Windows applies when a program reads a
Unicode name through an ANSI API (WideCharToMultiByte without WC_NO_BEST_FIT_CHARS).
"""

from __future__ import annotations

import posixpath
import unicodedata
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

# What every refused character becomes: visible, legal on every file system, never path syntax.
REPLACEMENT = "_"

# Extensions that should stay whole when "(1)" is inserted: "a.tar.gz" -> "a (1).tar.gz".
_DOUBLE_EXTENSIONS = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tar.lz", ".tar.z")

# Invisible characters, dropped: controls (Cc: NUL, ESC, DEL, C1), format characters (Cf: the bidi
# embeddings, overrides and isolates U+202A-E and U+2066-9, the marks U+200E/F and U+061C, zero-width
# characters, BOM), line/paragraph separators (Zl, Zp) and lone surrogates (Cs). A bidi override can
# make "inv\u202efdp.exe" show as "invexe.pdf".
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})

# Look-alikes of "/", "\" and ":" that NFKC leaves alone. Some become the real character when a
# Windows program reads the name through an ANSI code page with best fit (U+00A5 YEN SIGN is 0x5C,
# the path separator, in code page 932; U+20A9 WON SIGN in 949; U+2215 DIVISION SLASH becomes "/"),
# the rest are homoglyphs. They become REPLACEMENT, so no reader can find a separator or a stream
# name in them. (The full-width and small forms, U+FF0F, U+FF3C, U+FE68, U+FF1A, and the dot
# leaders U+2024/U+2025 and U+FE52, U+FF0E are turned into "/", "\", ":" and "." by NFKC and
# handled as those.)
_LOOKALIKES = str.maketrans(dict.fromkeys(
    "\u2215\u2044\u29f8\u2571"  # DIVISION SLASH, FRACTION SLASH (in NFKC of "½"), BIG SOLIDUS, box diagonal
    "\u2216\u29f5\u29f9\u2572"  # SET MINUS, REVERSE SOLIDUS OPERATOR, BIG REVERSE SOLIDUS, box diagonal
    "\u00a5\u20a9"  # YEN SIGN (0x5C in code page 932), WON SIGN (0x5C in 949); NFKC maps U+FFE5/U+FFE6 here
    "\u2236\ua789",  # RATIO, MODIFIER LETTER COLON
    REPLACEMENT,
))

# Refused by Windows in a name; ":" also names an NTFS alternate data stream ("a.txt:evil").
_WINDOWS_FORBIDDEN = str.maketrans(dict.fromkeys('<>:"|?*', REPLACEMENT))

# DOS device names: "aux", "aux.txt" and "AUX .tar.gz" all open the device on Windows. COM0/LPT0 and
# the superscript digits (COM¹, which NFKC turns into COM1) are reserved too; CONIN$/CONOUT$ open the console.
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{digit}" for port in ("COM", "LPT") for digit in "0123456789"}
)


def _clean_text(text: str) -> str:
    """Invisible characters dropped, then NFKC, then path-syntax look-alikes replaced.

    Dropping first keeps the result stable: NFKC never makes an invisible character, and a dropped
    one can no longer sit between a letter and its accent.
    """
    visible = "".join(char for char in text if unicodedata.category(char) not in _INVISIBLE)
    return unicodedata.normalize("NFKC", visible).translate(_LOOKALIKES)


def _trim(segment: str) -> str:
    """Whitespace off both ends, trailing dots off the end: Windows drops trailing dots and spaces
    ("a.txt. " is "a.txt"), so ". ." and ".." both mean nothing here."""
    segment = segment.strip()
    while segment.endswith("."):
        segment = segment.rstrip(".").rstrip()
    return segment


def _is_reserved(segment: str) -> bool:
    """A DOS device name, whatever its extension, case or accents (best fit turns "ŃUL" into "NUL")."""
    base = segment.partition(".")[0].rstrip(" ")
    folded = "".join(char for char in unicodedata.normalize("NFKD", base) if not unicodedata.combining(char))
    return folded.upper() in _RESERVED


def _safe_segment(segment: str) -> str:
    segment = _trim(segment)
    if not segment:
        return ""
    segment = segment.translate(_WINDOWS_FORBIDDEN)
    return REPLACEMENT + segment if _is_reserved(segment) else segment


def _skip_drives(segment: str) -> str:
    """`segment` without its leading drive letters: "C:x.txt" (drive-relative) -> "x.txt"."""
    start = 0
    while len(segment) >= start + 2 and segment[start + 1] == ":" and segment[start].isascii() \
            and segment[start].isalpha():
        start += 2
    return segment[start:]


def safe_name(name: str) -> str:
    """`name` made safe to extract on Windows, macOS and Linux: a relative '/'-separated path.

    In order: invisible characters (controls, bidi and other format characters) dropped; NFKC, so
    full-width "../" (U+FF0E U+FF0E U+FF0F) and "‥" (U+2025) are "../" and ".." before any check;
    look-alikes of "/", "\\" and ":" that NFKC leaves (U+2215, U+29F5, ¥ ...) replaced by
    REPLACEMENT ("_"); "\\" is a separator; UNC ("//server/share/"), device ("\\\\?\\",
    "\\\\.\\", "\\??\\") and drive ("C:", "C:x") prefixes removed; in every segment, whitespace
    and trailing dots removed, empty, "." and ".." segments dropped, `<>:"|?*` replaced by "_"
    (":" would name an NTFS alternate stream), and a DOS device name (CON, aux.txt, COM1.log ...)
    prefixed with "_".

    Returns "" when nothing is left; callers decide what an empty name means. Idempotent.
    """
    text = _clean_text(name).replace("\\", "/")
    relative = text.lstrip("/")
    rooted = len(text) - len(relative)
    parts = relative.split("/")
    start = 0
    if rooted >= 2 or (rooted == 1 and parts[0] == "??"):
        if parts[0] in ("?", ".", "??"):  # \\?\C:\x, \\.\device, \??\C:\x
            start = 1
            if len(parts) > 1 and parts[1].upper() == "UNC":  # \\?\UNC\server\share\x
                start = 4
        else:  # \\server\share\x
            start = 2
    kept: list[str] = []
    for part in parts[start:]:
        if not kept:  # a drive can only start the path ("C:/C:/x" starts it twice)
            part = _skip_drives(part.strip())
        segment = _safe_segment(part)
        if segment:
            kept.append(segment)
    return "/".join(kept)


def download_filename(name: str) -> str:
    """The zip's download name (Content-Disposition) made from a stored `filename`; "" if nothing is left.

    The same characters as entry names are dropped (controls, bidi and format characters) or
    normalised (NFKC); "/", "\\" and their look-alikes become "_" so the name can't form a path;
    whitespace and leading dots (a hidden file) and trailing dots are removed; a DOS device name gets
    a "_" prefix; ".zip" is appended unless the name already ends with it (any case), so "x.exe" is
    downloaded as "x.exe.zip". Other characters, `"` among them, are kept: RFC 6266's `filename*`
    carries them.
    """
    text = _clean_text(name).replace("\\", REPLACEMENT).replace("/", REPLACEMENT)
    text = _trim(text).lstrip(". ")
    if not text:
        return ""
    if _is_reserved(text):
        text = REPLACEMENT + text
    return text if text.lower().endswith(".zip") else f"{text}.zip"


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
    lowered = name.lower()
    for double in _DOUBLE_EXTENSIONS:
        if lowered.endswith(double) and len(name) > len(double):
            return name[: -len(double)], name[-len(double):]
    return posixpath.splitext(name)


def _fold(text: str) -> str:
    """Case and Unicode compatibility folded (close to Unicode's compatibility caseless match)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _key(segment: str) -> str:
    """How Windows (NTFS) and macOS (APFS, HFS+) compare a name, or stricter: case- and
    normalisation-insensitive, trailing dots and spaces ignored."""
    return _fold(segment).rstrip(". ")


class UniqueNames:
    """Entry names made unique as they are added, in time linear in the total length of the names.

    `add("a.txt")` twice gives "a.txt", then "a (1).txt". Names are compared as Windows and macOS
    compare them (`_key`: case-insensitive, Unicode-normalised, trailing dots and spaces ignored). A
    file may not share its name with a folder either ("docs" and "docs/b.txt" can't both be
    extracted): the later one is renamed — the file ("docs (1)"), or the folder, and every later path
    through that folder goes to the same renamed one ("docs (1)/b.txt", "docs (1)/c.txt").

    `probes` counts the candidate names looked at; each base name remembers the next number to try,
    so n names cost at most about 2n probes, whatever they are ("a.txt" 10,000 times, or names that
    already look like "a (1).txt").
    """

    def __init__(self) -> None:
        # Every file and folder, by (parent folder id, segment key): -1 for a file, else the folder's id.
        self._nodes: dict[tuple[int, str], int] = {}
        self._renamed: dict[tuple[int, str], tuple[int, str]] = {}  # folder over a file -> (id, name) used
        self._next: dict[tuple[int, str, str], int] = {}  # (parent, stem key, ext key) -> next number
        self.probes = 0

    def add(self, name: str) -> str:
        """`name` (a `safe_name` result), or the renamed path it must take."""
        *folders, leaf = name.split("/")
        parent, path = 0, []
        for segment in folders:
            parent, segment = self._folder(parent, segment)
            path.append(segment)
        path.append(self._file(parent, leaf))
        return "/".join(path)

    def _folder(self, parent: int, segment: str) -> tuple[int, str]:
        at = (parent, _key(segment))
        found = self._nodes.get(at)
        if found is None:
            self._nodes[at] = found = len(self._nodes) + 1
        elif found == -1:  # a file has that name: this folder and all later paths through it move
            if at not in self._renamed:
                numbered = self._numbered(parent, segment, "")
                self._nodes[(parent, _key(numbered))] = len(self._nodes) + 1
                self._renamed[at] = (self._nodes[(parent, _key(numbered))], numbered)
            return self._renamed[at]
        return found, segment

    def _file(self, parent: int, segment: str) -> str:
        self.probes += 1
        if (parent, _key(segment)) in self._nodes:
            segment = self._numbered(parent, *_split_extension(segment))
        self._nodes[(parent, _key(segment))] = -1
        return segment

    def _numbered(self, parent: int, stem: str, ext: str) -> str:
        """`stem (n)ext` for the first n not taken in `parent`, starting where this base last stopped.

        Names are only ever added, so every number below the remembered one is still taken.
        """
        base = (parent, _fold(stem), _fold(ext))
        number = self._next.get(base, 1)
        while True:
            self.probes += 1
            candidate = f"{stem} ({number}){ext}"
            number += 1
            if (parent, _key(candidate)) not in self._nodes:
                self._next[base] = number
                return candidate


def unique_names(names: Iterable[str]) -> list[str]:
    """The names in order, later duplicates renamed `name (1).ext`, `name (2).ext`, ... (see UniqueNames)."""
    unique = UniqueNames()
    return [unique.add(name) for name in names]
