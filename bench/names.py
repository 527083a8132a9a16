"""CPU time and memory of entry naming (safe_name + UniqueNames) for hostile bundles of MAX_FILES names.

Run from the repository root: `.venv/bin/python -m bench.names [count]` (default 10,000, MAX_FILES' default).
Issue 14 measured the old de-duplication at ~20 s for 10,000 equal names and ~27 s for `d` + `d/x0...`.
Names are up to 1 KiB (MAX_NAME_LENGTH's default for a dst): a 10,000-file body of such names is
10 MB, which JSON parsing and validation take ~0.3 s to read.
"""

from __future__ import annotations

import gc
import resource
import sys
import time
from collections.abc import Callable

from zipstream.names import UniqueNames, safe_name

COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
DEPTH = 500  # folders in a 1 KiB name of one-letter folders


def _comb(n: int) -> list[str]:
    """A folder at every level of a deep path, each with a file (every level is a branch)."""
    return ["a/" * level + f"x{level}" for level in range(min(DEPTH, n))]


SHAPES: dict[str, Callable[[int], list[str]]] = {
    "equal names": lambda n: ["a.txt"] * n,
    "d + d/x0...": lambda n: ["d"] + [f"d/x{i}" for i in range(n - 1)],
    "names already numbered": lambda n: [f"a ({i}).txt" for i in range(n // 2, 0, -1)] + ["a.txt"] * (n - n // 2),
    "equal 1 KiB names": lambda n: ["n" * 1024] * n,
    "equal deep paths": lambda n: ["a/" * DEPTH + "x"] * n,
    "distinct deep paths": lambda n: [f"{i}/" + "a/" * DEPTH + "x" for i in range(n)],
    "comb, then deep paths below it": lambda n: _comb(n) + ["a/" * DEPTH + f"b{i}/x" for i in range(n - DEPTH)],
    "comb, then 129 new levels below it": lambda n: _comb(n) + [
        "a/" * (DEPTH - 129) + f"b{i}/" + "c/" * 128 + "x" for i in range(n - DEPTH)],
    "chain of moved folders, then paths through it": lambda n: ["a/" * level + "a" for level in range(DEPTH)] + [
        "a/" * DEPTH + f"b{i}/x" for i in range(n - DEPTH)],
    "device names in every folder": lambda n: ["con/" * 255 + "x"] * n,
    "trailing dots in every folder": lambda n: ["a./" * 340 + "x"] * n,
    "1 KiB of look-alikes and prefixes": lambda n: [
        "\\\\?\\C:\\" + "\uff0e\uff0e\uff0f\u2025\u202e\u2215C:" * 120] * n,
}


def main() -> None:
    print(f"| shape ({COUNT:,} names) | CPU seconds | peak memory added (MB) | probes |")
    print("|---|---|---|---|")
    for label, make in SHAPES.items():
        names = make(COUNT)
        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.process_time()
        unique = UniqueNames()
        for name in names:
            unique.add(safe_name(name) or "file")
        seconds = time.process_time() - started
        added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(f"| {label} | {seconds:.2f} | {added:.0f} | {unique.probes:,} |")
        del unique


if __name__ == "__main__":
    main()
