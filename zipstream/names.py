"""Entry names: derive them from a src, make them safe to extract anywhere, make them unique.

Also the zip's own download name (`download_filename`). One character pipeline serves both, so a name
that is safe inside the zip is safe as the zip's name too.

Rules come from Microsoft's "Naming Files, Paths, and Namespaces" (reserved characters and device
names, trailing dots and spaces, drive, UNC and `\\\\?\\` / `\\\\.\\` prefixes), Unicode UAX #15 (NFKC)
and UAX #9 (bidi controls), and the "best fit" conversion Windows applies when a program reads a
Unicode name through an ANSI API (WideCharToMultiByte without WC_NO_BEST_FIT_CHARS).
"""

from __future__ import annotations

import functools
import itertools
import posixpath
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

# The longest name segment, in UTF-8 bytes: ext4, XFS and APFS allow 255 bytes, NTFS 255 UTF-16
# units (never fewer than 255 UTF-8 bytes hold); past it unzip, bsdtar and 7-Zip fail with "File
# name too long" and that file is not extracted.
MAX_SEGMENT_BYTES = 255
# An extension kept whole when a long segment is shortened; a longer "extension" is just text.
_MAX_KEPT_EXTENSION = 32

# What every refused character becomes: visible, legal on every file system, never path syntax.
REPLACEMENT = "_"

# Extensions that should stay whole when "(1)" is inserted: "a.tar.gz" -> "a (1).tar.gz".
_DOUBLE_EXTENSIONS = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tar.lz", ".tar.z")

# Invisible characters, dropped: controls (Cc: NUL, ESC, DEL, C1), format characters (Cf: the bidi
# embeddings, overrides and isolates U+202A-E and U+2066-9, the marks U+200E/F and U+061C, zero-width
# characters, BOM, tags), line/paragraph separators (Zl, Zp) and lone surrogates (Cs). A bidi override
# can make "inv\u202efdp.exe" show as "invexe.pdf".
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_ASCII_CONTROLS = str.maketrans(dict.fromkeys([*range(32), 127]))

# Look-alikes of "/", "\" and ":" that NFKC leaves alone. Some become the real character when a
# Windows program reads the name through an ANSI code page with best fit (U+00A5 YEN SIGN is 0x5C,
# the path separator, in code page 932; U+20A9 WON SIGN in 949; U+2215 DIVISION SLASH becomes "/"),
# the rest are homoglyphs. They become REPLACEMENT, so no reader can find a separator or a stream
# name in them. (The full-width and small forms, U+FF0F, U+FF3C, U+FE68, U+FF1A, and the dot
# leaders U+2024/U+2025 and U+FE52, U+FF0E are turned into "/", "\", ":" and "." by NFKC and
# handled as those.)
LOOKALIKES = (
    "\u2215\u2044\u29f8\u2571"  # DIVISION SLASH, FRACTION SLASH (in NFKC of "½"), BIG SOLIDUS, box diagonal
    "\u2216\u29f5\u29f9\u2572"  # SET MINUS, REVERSE SOLIDUS OPERATOR, BIG REVERSE SOLIDUS, box diagonal
    "\u00a5\u20a9"  # YEN SIGN (0x5C in code page 932), WON SIGN (0x5C in 949); NFKC maps U+FFE5/U+FFE6 here
    "\u2236\ua789"  # RATIO, MODIFIER LETTER COLON
)
_LOOKALIKES = re.compile(f"[{LOOKALIKES}]")  # str.translate is slow on non-ASCII text

# Refused by Windows in a name; ":" also names an NTFS alternate data stream ("a.txt:evil").
WINDOWS_FORBIDDEN = '<>:"|?*'
_WINDOWS_FORBIDDEN = re.compile(f"[{re.escape(WINDOWS_FORBIDDEN)}]")

# Every segment's edges, found in one pass: a separator with the whitespace and trailing dots around
# it, and every segment of only dots and whitespace after it (Windows drops trailing dots and spaces,
# so "a.txt. " is "a.txt" and ". ." is ".."). The lookbehind starts a match only where a run of dots
# and whitespace starts, and the possessive runs never backtrack: linear on any input.
_SEGMENT_EDGES = re.compile(r"(?<![.\s])(?:[.\s]*+/)++\s*+")
# Drive letters that start the path: "C:", "C:/C:/", "C:x.txt" (drive-relative).
_DRIVES = re.compile(r"(?:[A-Za-z]:[\s/]*+)++")


# Whether any segment needs trimming shows in a few substrings of "/" + path + "/" (after _clean_text
# the only whitespace left is " " and U+1680): without them, _SEGMENT_EDGES has nothing to do.
_EDGE_MARKS = ("//", "/.", "./", " /", "/ ", "\u1680")


def _variants(letter: str) -> set[str]:
    """`letter` in either case and with any accent (Latin-1 Supplement to Latin Extended-B, Latin
    Extended Additional): best fit turns "Ń" into "N"."""
    return {letter.upper(), letter.lower()} | {
        chr(code) for code in [*range(0xC0, 0x250), *range(0x1E00, 0x1F00)]
        if unicodedata.normalize("NFD", chr(code))[0].upper() == letter
    }


def _letter(letter: str) -> str:
    return f"[{''.join(sorted(_variants(letter)))}][\u0300-\u036f]*"


def _device(name: str) -> str:
    return "".join(_letter(char) if char.isalpha() else re.escape(char) for char in name)


# DOS device names: "aux", "aux.txt" and "AUX .tar.gz" all open the device on Windows. COM0/LPT0 and
# the superscript digits (COM¹, which NFKC turns into COM1) are reserved too; CONIN$/CONOUT$ open the
# console. Matches the "/" before each such segment (a leading "/" is added for the first one): a
# pattern that starts with a literal is searched for far faster than one that starts with a lookbehind.
RESERVED_NAMES = ("CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", *(f"{port}{digit}" for port in ("COM", "LPT")
                                                                  for digit in "0123456789"))
_RESERVED = re.compile(
    "/(?=(?:" + "|".join(map(_device, ("CONIN$", "CONOUT$", "CON", "PRN", "AUX", "NUL")))
    + f"|(?:{_device('COM')}|{_device('LPT')})[0-9]) *(?:[./]|$))"
)
# What a name needs to hold for _RESERVED to find anything: a device name's first three letters, or
# an accented letter or combining accent that could spell one.
_RESERVED_STEMS = ("con", "prn", "aux", "nul", "com", "lpt")
_ACCENTED = re.compile("[" + "".join(sorted({char for letter in "ACILMNOPRTUX" for char in _variants(letter)
                                             if not char.isascii()})) + "\u0300-\u036f]")


def _make_harmless(name: str) -> str:
    """Windows-forbidden characters replaced, DOS device names prefixed (checks first: they are cheap)."""
    if any(char in name for char in WINDOWS_FORBIDDEN):
        name = _WINDOWS_FORBIDDEN.sub(REPLACEMENT, name)
    lowered = name.lower()
    if any(stem in lowered for stem in _RESERVED_STEMS) or (not name.isascii() and _ACCENTED.search(name)):
        name = _RESERVED.sub("/" + REPLACEMENT, "/" + name)[1:]
    return name


@functools.cache
def _invisible() -> re.Pattern[str]:
    """Every character of INVISIBLE_CATEGORIES (all below U+20000 or in the U+E0000 block, the tags)."""
    codes = [code for code in [*range(0x20000), *range(0xE0000, 0xE1000)]
             if unicodedata.category(chr(code)) in INVISIBLE_CATEGORIES]
    ranges, first, last = [], codes[0], codes[0]
    for code in codes[1:]:
        if code != last + 1:
            ranges.append((first, last))
            first = code
        last = code
    ranges.append((first, last))
    return re.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges) + "]")


def _clean_text(text: str) -> str:
    """Invisible characters dropped, then NFKC, then path-syntax look-alikes replaced.

    Dropping first keeps the result stable: NFKC never makes an invisible character, and a dropped
    one can no longer sit between a letter and its accent.
    """
    if text.isascii():  # NFKC leaves ASCII alone, and it holds no look-alike
        return text if text.isprintable() else text.translate(_ASCII_CONTROLS)
    if not text.isprintable():  # isprintable: none of Cc, Cf, Cs, Zl, Zp (nor Co, Cn, Zs but " ")
        text = _invisible().sub("", text)
    text = unicodedata.normalize("NFKC", text)
    return _LOOKALIKES.sub(REPLACEMENT, text) if any(char in text for char in LOOKALIKES) else text


def _trim(text: str) -> str:
    """Whitespace off both ends, trailing dots off the end ("a.txt. " -> "a.txt", ". ." -> "")."""
    text = text.strip()
    while text.endswith("."):
        text = text.rstrip(".").rstrip()
    return text


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

    Returns "" when nothing is left; callers decide what an empty name means. Idempotent, and linear
    in the length of `name`.
    """
    text = _clean_text(name).replace("\\", "/")
    relative = text.lstrip("/")
    rooted = len(text) - len(relative)
    if rooted >= 2 or (rooted == 1 and relative.startswith("??/")):
        head = relative.split("/", 4)
        skip = 0
        if head[0] in ("?", ".", "??"):  # \\?\C:\x, \\.\device, \??\C:\x
            skip = 4 if len(head) > 1 and head[1].upper() == "UNC" else 1  # \\?\UNC\server\share\x
        elif rooted >= 2:  # \\server\share\x
            skip = 2
        relative = "/".join(head[skip:]) if skip < len(head) else ""
    wrapped = f"/{relative}/"
    if any(mark in wrapped for mark in _EDGE_MARKS):
        relative = _SEGMENT_EDGES.sub("/", wrapped).strip("/")
    drives = _DRIVES.match(relative)
    if drives:
        relative = relative[drives.end():]
    relative = _make_harmless(relative)
    if len(relative) > MAX_SEGMENT_BYTES // 4 and any(
            len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES for segment in relative.split("/")):
        relative = "/".join(_shorten(segment) for segment in relative.split("/"))
    return relative


def _shorten(segment: str, suffix: str = "", limit: int = MAX_SEGMENT_BYTES) -> str:
    """`segment` with `suffix` ("" or " (n)") before its extension, within `limit` UTF-8 bytes.

    The stem is cut (never inside a character) and the cut's trailing dots and spaces removed; an
    extension of up to 32 bytes is kept. Only the lengths change: the result is as safe as `segment`.
    """
    stem, ext = _split_extension(segment)
    if len(ext.encode("utf-8", "surrogatepass")) > _MAX_KEPT_EXTENSION:
        stem, ext = segment, ""
    room = limit - len((suffix + ext).encode("utf-8", "surrogatepass"))
    encoded = stem.encode("utf-8", "surrogatepass")
    if len(encoded) > room:
        # A cut can leave nothing ("....x") or a device name ("CON" and spaces): check again.
        stem = _make_harmless(_trim(encoded[:room].decode("utf-8", "ignore")) or REPLACEMENT)
    return f"{stem}{suffix}{ext}"


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
    text = _trim(text).lstrip(". ").lstrip()
    if not text:
        return ""
    if _RESERVED.match("/" + text):
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
    """How Windows (NTFS) and macOS (APFS, HFS+) compare names, or stricter: case-insensitive and
    Unicode-normalised (close to Unicode's compatibility caseless match; "ß" matches "ss")."""
    if text.isascii():
        return text.lower()
    # upper() first: NTFS compares upper-cased names, and for U+0131 (dotless i) upper() gives "I" while
    # casefold() keeps it (the one such character in the BMP); others fold the same either way.
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).upper().casefold())


def _path_key(path: str) -> str:
    """`_fold` of every segment of `path`, '/'-separated (one pass over the whole path when it can)."""
    key = _fold(path)
    if key.count("/") != path.count("/"):  # folding made or removed a "/": fold segment by segment
        key = "/".join(_fold(segment).replace("/", "\x00") for segment in path.split("/"))
    return key


class _Folder:
    """A folder of UniqueNames' tree, a radix tree of names: one edge holds a whole run of folders
    that no other name branches from, so the tree has a few nodes per name however deep names go.

    `edges`: by the key of their first segment. `moved`: for a name here that is a file, the folder
    that paths through it were given instead: key -> its key and name.
    """

    __slots__ = ("edges", "moved")

    def __init__(self) -> None:
        self.edges: dict[str, _Edge] = {}
        self.moved: dict[str, tuple[str, str]] = {}


class _Edge:
    """A run of segments from a folder: their keys and their names ('/'-joined), and where it ends:
    a folder, or _FILE."""

    __slots__ = ("keys", "names", "to")

    def __init__(self, keys: str, names: str, to: _Folder) -> None:
        self.keys, self.names, self.to = keys, names, to

    def split(self, at: int, segments: int) -> _Folder:
        """Cut the edge at offset `at` of its keys (after `segments` segments): the folder made there."""
        fork = _Folder()
        names = self.names.split("/", segments)
        tail = self.keys[at + 1:]
        fork.edges[tail.split("/", 1)[0]] = _Edge(tail, names[-1], self.to)
        self.keys, self.names, self.to = self.keys[:at], "/".join(names[:-1]), fork
        return fork


_FILE = _Folder()  # where every edge that ends in a file leads (a file has no edges)

# Folders a path is walked through from the top before the walk looks for a known folder near its end
# instead: among folders that branch at every level (a "comb"), each name would cost its depth.
WALK_BUDGET = 8


class UniqueNames:
    """Entry names made unique as they are added, in time and memory linear in their total length.

    `add("a.txt")` twice gives "a.txt", then "a (1).txt". Names are compared as Windows and macOS
    compare them (`_fold`: case-insensitive, Unicode-normalised; `safe_name` has already removed the
    trailing dots and spaces Windows ignores), and a folder keeps the spelling it was first given
    ("Docs/a.txt", "docs/b.txt" -> "Docs/a.txt", "Docs/b.txt"), so every system extracts the same tree.
    A file may not share its name with a folder either ("docs" and "docs/b.txt" can't both be
    extracted): the later one is renamed — the file ("docs (1)"), or the folder, and every later path
    through that folder goes to the same renamed one ("docs (1)/b.txt", "docs (1)/c.txt").

    `probes` counts the candidate names looked at; each base name remembers the next number to try,
    so n names cost at most about 2n probes, whatever they are ("a.txt" 10,000 times, or names that
    already look like "a (1).txt").
    """

    def __init__(self, walk_budget: int = WALK_BUDGET) -> None:
        self._walk_budget = walk_budget
        self._root = _Folder()
        self._next: dict[tuple[_Folder, str, str], int] = {}  # (folder, stem key, ext key) -> next number
        self._known: dict[str, tuple[_Folder, str]] = {}  # folder paths met, by key: the folder, its path
        self.probes = 0

    def add(self, name: str) -> str:
        """`name` (a `safe_name` result), or the renamed path it must take."""
        folder, _, leaf = name.rpartition("/")
        parent, path = self._folder(folder) if folder else (self._root, "")
        key = _fold(leaf)
        self.probes += 1
        if key in parent.edges:  # a file or a folder has this name
            leaf = self._numbered(parent, *_split_extension(leaf))
            key = _fold(leaf)
        parent.edges[key] = _Edge(key, leaf, _FILE)
        return f"{path}/{leaf}" if path else leaf

    def _folder(self, folder: str) -> tuple[_Folder, str]:
        """The folder `folder` names, made if new, and its path as the zip names it."""
        keys = _path_key(folder)
        known = self._known.get(keys)
        if known is not None:
            return known
        end = len(keys)
        node, path = self._root, []  # the folder reached, and the names of the edges that led there
        start, number = 0, 0  # where the current segment starts in `keys`, and its number
        walked = 0
        while True:
            walked += 1
            if walked == self._walk_budget:  # deep among many folders: start from a known one near the end
                jump = self._deepest_known(keys, start)
                if jump is not None:
                    node, known_path, cut = jump
                    path, start, number = [known_path], cut + 1, keys.count("/", 0, cut) + 1
            stop = keys.find("/", start)
            stop = end if stop < 0 else stop
            key = keys[start:stop]
            if key in node.moved:
                key, name = node.moved[key]
            else:
                name = ""  # this name's own spelling, if it starts a new edge
            edge = node.edges.get(key)
            if edge is None:  # nothing here yet: the rest of the path is one new edge
                rest = folder.split("/", number)[-1]
                if name:
                    rest = name + rest[rest.find("/"):] if "/" in rest else name
                child = _Folder()
                node.edges[key] = _Edge(key + keys[stop:] if name else keys[start:], rest, child)
                path.append(rest)
                return self._remember(keys, child, path)
            rest = edge.keys[len(key):]  # the edge's other segments, each after a "/"
            after = stop + len(rest)
            if keys.startswith(rest, stop) and (after == end or keys[after] == "/"):
                if edge.to is _FILE:  # a file has this folder's name: later paths through it move
                    numbered = self._numbered(node, edge.names, "")
                    node.moved[key] = (_fold(numbered), numbered)
                    continue  # the same segment again, now moved
                path.append(edge.names)
                if after == end:
                    return self._remember(keys, edge.to, path)
                node, start, number = edge.to, after + 1, number + 1 + rest.count("/")
                continue
            # The path leaves the edge (or ends) inside it: a folder where they part.
            common = _common_length(rest, keys, stop)
            boundary = rest.rfind("/", 0, common + 1)
            if boundary == common and not (stop + common == end or keys[stop + common] == "/"):
                boundary = rest.rfind("/", 0, common)
            boundary = max(boundary, 0)
            segments = 1 + rest.count("/", 0, boundary)
            fork = edge.split(len(key) + boundary, segments)
            path.append(edge.names)
            parted, number = stop + boundary, number + segments
            if parted == end:
                return self._remember(keys, fork, path)
            self._remember(keys[:parted], fork, path)
            node, start = fork, parted + 1

    def _deepest_known(self, keys: str, start: int) -> tuple[_Folder, str, int] | None:
        """A known folder on the path `keys` below offset `start`, found by looking 1, 2, 4 ... segments
        up from the end, then halving the gap to the last miss (the folder, its path, where it ends in
        `keys`); None if none is found."""
        # Where the path ends 1, 2, ... segments up from the end, down to `start` (C-speed: no Python
        # loop over segments; the one or two nearest first, as the nearest is usually known).
        cuts = [keys.rfind("/", start)]
        if cuts[0] >= start and (near := self._known.get(keys[:cuts[0]])) is not None:
            return (*near, cuts[0])
        sizes = map((1).__add__, map(len, keys[start:].split("/")))  # each segment and its "/"
        cuts = list(itertools.accumulate(sizes, initial=start - 1))[-2:0:-1]

        def probe(distance: int) -> tuple[_Folder, str] | None:
            return self._known.get(keys[:cuts[distance - 1]]) if distance <= len(cuts) else None

        missed, distance = 1, 2
        while (found := probe(distance)) is None:
            if distance >= len(cuts):
                return None
            missed, distance = distance, min(distance * 2, len(cuts))
        while distance - missed > 1:  # nearer the end, if known folders are there too
            middle = (missed + distance) // 2
            if (nearer := probe(middle)) is not None:
                found, distance = nearer, middle
            else:
                missed = middle
        return (*found, cuts[distance - 1])

    def _remember(self, keys: str, node: _Folder, path: list[str]) -> tuple[_Folder, str]:
        """Record that the folder path `keys` is `node`, named by the edges `path`."""
        joined = "/".join(path)
        known = self._known[keys] = (node, joined)
        return known

    def _numbered(self, parent: _Folder, stem: str, ext: str) -> str:
        """`stem (n)ext` for the first n not taken in `parent`, starting where this base last stopped.

        Names are only ever added, so every number below the remembered one is still taken.
        """
        base = (parent, _fold(stem), _fold(ext))
        number = self._next.get(base, 1)
        while True:
            self.probes += 1
            candidate = f"{stem} ({number}){ext}"
            if len(candidate) > MAX_SEGMENT_BYTES // 4:
                candidate = _shorten(stem + ext, f" ({number})")
            number += 1
            if _fold(candidate) not in parent.edges:
                self._next[base] = number
                return candidate


def _common_length(text: str, other: str, start: int) -> int:
    """How many first characters of `text` `other` has from `start` on (binary search, C-speed compares)."""
    low, high = 0, min(len(text), len(other) - start)
    while low < high:
        middle = (low + high + 1) // 2
        if other.startswith(text[:middle], start):
            low = middle
        else:
            high = middle - 1
    return low


def unique_names(names: Iterable[str]) -> list[str]:
    """The names in order, later duplicates renamed `name (1).ext`, `name (2).ext`, ... (see UniqueNames)."""
    unique = UniqueNames()
    return [unique.add(name) for name in names]
