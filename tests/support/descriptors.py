"""What this process holds open, read from /proc (Linux): to prove a body was given back, not leaked.

A descriptor that is still in the table is still open, whoever forgot it; a connection returned to a
pool keeps its socket (and is still counted), a connection closed does not.
"""

from __future__ import annotations

import os
from pathlib import Path


def _descriptor_targets() -> list[str]:
    targets = []
    for name in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:  # closed meanwhile (the listing's own descriptor, another thread's)
            continue
    return targets


def sockets_to(port: int) -> int:
    """This process's open TCP sockets whose remote end is `port` (on any address)."""
    inodes = {target[len("socket:["):-1] for target in _descriptor_targets() if target.startswith("socket:[")}
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table, encoding="ascii") as lines:
            next(lines)  # the heading
            for line in lines:
                fields = line.split()
                remote, inode = fields[2], fields[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def files_under(root: Path) -> int:
    """This process's open descriptors of files at or below `root`."""
    base = str(root.resolve())
    return sum(1 for target in _descriptor_targets() if target == base or target.startswith(base + "/"))
