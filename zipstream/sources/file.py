"""Local directory filestore: `file://` srcs, confined to FILE_ROOT (mounted volumes, NFS, EFS; the demo).

A src's path is taken relative to FILE_ROOT, like a chroot: with `FILE_ROOT=/srv/data`,
`file:///reports/a.csv` is `/srv/data/reports/a.csv` and its default entry name is `reports/a.csv`.
`..` segments are refused outright; symlinks are followed only when their target is still inside
FILE_ROOT. A src ending in `/` expands to every regular file below that directory, sorted by path like
an S3 listing.

Only regular files are read. Opening a FIFO for reading blocks until a writer appears (and a gevent
worker's every greenlet with it), and a device can be endless: every open is non-blocking, refuses a
symlink put in place of the resolved path, and is followed by an fstat of what was opened, at
pre-flight and again when the file is streamed (it may have been swapped since).
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_module
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from ..chunks import read_size
from ..config import Config
from ..deadline import Deadline
from ..errors import SourceChanged, SourceError, SourceNotFound, SourceRefused
from .contract import SourceInfo

log = logging.getLogger(__name__)


# O_NONBLOCK: a FIFO opens at once instead of waiting for a writer (regular files ignore the flag).
# O_NOFOLLOW: the path was resolved already; a symlink there now was put in place since.
_OPEN_FLAGS = (os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0))
# Each folder of a resolved path, opened from its parent's descriptor: O_NOFOLLOW refuses a folder
# swapped for a symlink since the path was resolved (open() follows symlinks in every folder of a path).
_FOLDER_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)

_KINDS = (
    (stat_module.S_ISDIR, "a directory"),
    (stat_module.S_ISFIFO, "a FIFO"),
    (stat_module.S_ISSOCK, "a socket"),
    (stat_module.S_ISCHR, "a character device"),
    (stat_module.S_ISBLK, "a block device"),
    (stat_module.S_ISLNK, "a symlink"),
)


def _kind(mode: int) -> str:
    """What a non-regular file is, for messages: 'a FIFO', 'a directory'..."""
    return next((name for test, name in _KINDS if test(mode)), "of an unknown kind")


class _NotRegular(Exception):
    """What was opened (or is at the path) is not a regular file; its argument says what it is."""


def _etag(status: os.stat_result) -> str:
    return f'"{status.st_ino}-{status.st_size}-{status.st_mtime_ns}"'


def _open_beneath(root: str, path: str) -> int:
    """A descriptor of `path` (a resolved path below the folder `root`), reached one segment at a time
    from `root` without following any symlink: a folder of `path` swapped for a symlink after `path` was
    resolved can't lead the open out of `root`. Raises OSError (ELOOP or ENOTDIR for a symlink)."""
    segments = os.path.relpath(path, root).split(os.sep)
    if segments[0] in (os.curdir, os.pardir):
        raise OSError(errno.EXDEV, "not below FILE_ROOT", path)
    folder = os.open(root, _FOLDER_FLAGS)
    try:
        for segment in segments[:-1]:
            inner = os.open(segment, _FOLDER_FLAGS, dir_fd=folder)
            os.close(folder)
            folder = inner
        return os.open(segments[-1], _OPEN_FLAGS, dir_fd=folder)
    finally:
        os.close(folder)


def _open_regular(root: str, path: str) -> tuple[int, os.stat_result]:
    """A descriptor of `path` (below `root`, see _open_beneath) opened without blocking, and its fstat;
    raises OSError (ELOOP for a symlink), or _NotRegular naming the kind of anything but a regular file
    (closed again)."""
    descriptor = _open_beneath(root, path)
    try:
        status = os.fstat(descriptor)
    except BaseException:
        os.close(descriptor)
        raise
    if not stat_module.S_ISREG(status.st_mode):
        os.close(descriptor)
        raise _NotRegular(_kind(status.st_mode))
    return descriptor, status


class FileSource:
    """Reads regular files below FILE_ROOT; every path is resolved and checked before it is opened."""

    schemes: ClassVar[tuple[str, ...]] = ("file",)

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    @classmethod
    def from_config(cls, config: Config) -> FileSource:
        """FILE_ROOT; ValueError without one."""
        if not config.file_root:
            raise ValueError("FileSource needs FILE_ROOT")
        return cls(config.file_root)

    # -- names --------------------------------------------------------------------------------

    def _relative(self, src: str) -> str:
        """The src's path relative to FILE_ROOT ('' for the root itself); refuses anything odd."""
        parts = urlsplit(src)
        if parts.scheme.lower() != "file":
            raise SourceRefused(src, "not a file:// src")
        if parts.netloc not in ("", "localhost"):
            raise SourceRefused(src, "file:// srcs name no host: write file:///path/below/FILE_ROOT")
        if parts.query or parts.fragment:
            raise SourceRefused(src, "file:// srcs take no query or fragment")
        path = unquote(parts.path, errors="strict")
        if "\x00" in path:
            raise SourceRefused(src, "the path holds a NUL byte")
        segments = [segment for segment in path.split("/") if segment not in ("", ".")]
        if ".." in segments:
            raise SourceRefused(src, "'..' is not allowed in file:// paths")
        return "/".join(segments)

    def _inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root.rstrip("/") + "/")

    def _resolve(self, src: str, relative: str) -> str:
        """The real path (symlinks resolved), refusing one that ends up outside FILE_ROOT."""
        try:
            real = os.path.realpath(os.path.join(self.root, relative))
        except OSError as error:  # a folder swapped for a symlink while it was read (EINVAL)
            raise SourceNotFound(src, f"cannot resolve the path: {error.strerror or error}") from None
        if not self._inside(real):
            raise SourceRefused(src, "the path leads outside FILE_ROOT")
        return real

    def _name(self, real: str) -> str:
        return os.path.relpath(real, self.root).replace(os.sep, "/")

    # -- the Source protocol --------------------------------------------------------------------

    def check(self, src: str) -> None:
        """Refuse malformed srcs and paths that climb out of FILE_ROOT (no disk access)."""
        try:
            self._relative(src)
        except UnicodeDecodeError:
            raise SourceRefused(src, "the path is not valid UTF-8 once percent-decoded") from None

    def stat(self, src: str, deadline: Deadline | None = None) -> list[SourceInfo]:
        """One SourceInfo for a file, or one per regular file below a directory src ending in '/'."""
        # `deadline` is not used: a hung mount still cannot hold the answer past it (pre-flight stops
        # waiting for it).
        self.check(src)
        relative = self._relative(src)
        real = self._resolve(src, relative)
        try:
            status = os.stat(real)
        except FileNotFoundError:
            raise SourceNotFound(src, "no such file") from None
        except OSError as error:
            raise SourceNotFound(src, f"cannot read: {error.strerror or error}") from None
        if stat_module.S_ISDIR(status.st_mode):
            if not src.endswith("/"):
                raise SourceNotFound(src, "is a directory; end the src with '/' to include its files")
            return self._expand(src, real)
        if not stat_module.S_ISREG(status.st_mode):
            # Refused before it is opened: opening a device can do things (a tape rewinds).
            raise SourceRefused(src, f"not a regular file ({_kind(status.st_mode)})")
        if src.endswith("/"):
            raise SourceNotFound(src, "is a file, not a directory")
        return [self._info(src, relative, real, self._opened(src, real))]

    def _opened(self, src: str, real: str) -> os.stat_result:
        """The fstat of `real` opened as a regular file (it opens: readable; it is what was looked at)."""
        try:
            descriptor, status = _open_regular(self.root, real)
        except _NotRegular as kind:
            raise SourceRefused(src, f"not a regular file ({kind})") from None
        except FileNotFoundError:
            raise SourceNotFound(src, "no such file") from None
        except OSError as error:
            raise SourceNotFound(src, f"cannot open: {error.strerror or error}") from None
        os.close(descriptor)
        return status

    @staticmethod
    def _info(src: str, name: str, real: str, status: os.stat_result) -> SourceInfo:
        return SourceInfo(
            src=src,
            name=name,
            size=status.st_size,
            etag=_etag(status),
            last_modified=datetime.fromtimestamp(status.st_mtime_ns / 1e9, UTC),
            location=(real,),
        )

    def _expand(self, src: str, directory: str) -> list[SourceInfo]:
        infos: list[SourceInfo] = []
        for current, subdirectories, files in os.walk(directory, followlinks=False):
            subdirectories.sort()
            for name in sorted(files):
                lexical = os.path.join(current, name)
                member_src = src + os.path.relpath(lexical, directory).replace(os.sep, "/")
                try:
                    real = os.path.realpath(lexical)
                except OSError as error:  # a folder swapped for a symlink while it was read (EINVAL)
                    raise SourceNotFound(member_src, f"cannot resolve the path: {error.strerror or error}") from None
                if not self._inside(real):
                    raise SourceRefused(member_src, "a symlink leads outside FILE_ROOT")
                try:
                    status = os.stat(real)
                except OSError as error:
                    raise SourceNotFound(member_src, f"cannot read: {error.strerror or error}") from None
                if not stat_module.S_ISREG(status.st_mode):
                    continue  # sockets, fifos, devices: reading them could block forever
                status = self._opened(member_src, real)
                infos.append(self._info(member_src, self._name(lexical), real, status))
        # One global order, like an S3 listing: by path, not directory by directory.
        return sorted(infos, key=lambda info: info.name)

    def open(self, info: SourceInfo, start: int = 0) -> Iterator[bytes]:
        """The bytes from `start`, only while the file is the same inode, size and mtime as at stat.

        Raises SourceChanged if it is not, or if it is no longer a regular file (never blocking on a
        FIFO swapped in since pre-flight); SourceError if it can't be opened or read.
        """
        path = info.location[0] if info.location else self._resolve(info.src, self._relative(info.src))
        if not self._inside(path):
            raise SourceRefused(info.src, "the path leads outside FILE_ROOT")
        try:
            before = os.lstat(path)
            if not stat_module.S_ISREG(before.st_mode):  # refused before it is opened, where it can be
                raise _NotRegular(_kind(before.st_mode))
            descriptor, _status = _open_regular(self.root, path)
        except FileNotFoundError:
            raise SourceChanged(info.src, "the file was removed after pre-flight") from None
        except _NotRegular as kind:
            raise SourceChanged(info.src, f"is no longer a regular file ({kind})") from None
        except OSError as error:
            raise SourceError(info.src, f"cannot open: {error.strerror or error}") from None
        reading = self._read(info, descriptor, start)
        next(reading)  # inside its `try` now: closing it even before its first chunk closes the descriptor
        return reading

    def _read(self, info: SourceInfo, descriptor: int, start: int) -> Iterator[bytes]:
        """The chunks (after one empty item that `open` takes: see there); closes `descriptor`."""
        try:
            yield b""
            self._same_version(info, descriptor)
            remaining = (info.size or 0) - start
            position = start
            while remaining > 0:
                try:
                    chunk = os.pread(descriptor, min(read_size(), remaining), position)
                except OSError as error:
                    raise SourceError(info.src, f"read failed: {error.strerror or error}") from None
                if not chunk:
                    raise SourceChanged(info.src, "the file got shorter while it was read")
                position += len(chunk)
                remaining -= len(chunk)
                yield chunk
                del chunk  # not kept while the next is read (memory.py: a grant covers one chunk)
            # A write during the read shows in the size or mtime: never hand out a spliced file.
            self._same_version(info, descriptor)
        finally:
            os.close(descriptor)

    @staticmethod
    def _same_version(info: SourceInfo, descriptor: int) -> None:
        status = os.fstat(descriptor)
        if _etag(status) != info.etag:
            raise SourceChanged(info.src, "the file changed since pre-flight (inode, size or mtime differ)")
