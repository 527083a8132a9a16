"""`python -m bench [--only b1,b2,...] [--full] [--runs N] ...`: run benchmarks, print and save tables.

The default run keeps sizes small: about 2 minutes on 2 cores. `--full` uses the full sizes
(2 x 1 GiB, 5 GiB member, 10,000 files, 10,000 concurrent downloads): about 5 minutes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from . import suite
from .harness import RESULTS, Table

ALL = ("b1", "b2", "b3", "b4", "b5", "b6", "traffic")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated benchmarks (default: all)")
    parser.add_argument("--full", action="store_true",
                        help="full sizes: 2 x 1 GiB, a 5 GiB member, 10,000 files, 10,000 downloads (~5 min)")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--tmp", type=Path, default=None,
                        help="directory for test files (kept between runs; default: a temporary one)")
    parser.add_argument("--b1-big-mib", type=int, default=None, help="size of the 2 big files (MiB)")
    parser.add_argument("--b2-files", type=int, default=1000)
    parser.add_argument("--b3-counts", default=None, help="simultaneous downloads, e.g. 1000,5000,10000")
    parser.add_argument("--b3-prefetch", default="default,0", help="PREFETCH values for B3 ('default' = unset)")
    parser.add_argument("--b4-gib", type=float, default=None, help="size of the huge member (GiB)")
    parser.add_argument("--b5-counts", default=None, help="files per bundle, e.g. 10,100,1000,10000")
    parser.add_argument("--b6-mib", type=int, default=None, help="data streamed per compression (MiB)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the tables are written")
    parser.add_argument("--small", action="store_true", help="tiny sizes (the smoke test uses this)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the service under test (repeatable)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, tmp: Path) -> list[Table]:
    env = dict(item.split("=", 1) for item in args.env)
    only = [name.strip().lower() for name in args.only.split(",") if name.strip()]
    small, full = args.small, args.full
    runs = 1 if small else args.runs
    tables = []
    for name in only:
        began = time.perf_counter()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        if name == "b1":
            big = args.b1_big_mib or (1 if small else 1024 if full else 256)
            cases = [(3, 64 * 1024)] if small else [(20, 10 * suite.MiB)]
            cases.append((2, big * suite.MiB))
            tables.append(suite.big_files(tmp, runs, cases, env))
        elif name == "b2":
            count = 20 if small else args.b2_files
            head = {"PREFLIGHT_FETCH_BYTES": "0"}
            variants = [head, {}] if small else [
                {**head, "PREFLIGHT_CONCURRENCY": "32"},  # the first release: HEAD, then GET while streaming
                {**head},
                {"PREFLIGHT_CONCURRENCY": "32"},
                {},  # the defaults
                {"PREFETCH": "0"},
            ]
            tables.append(suite.small_files(tmp, runs, count, 16 * 1024, 0.02, variants, env))
        elif name == "b3":
            counts = _ints(args.b3_counts) if args.b3_counts else [20] if small else \
                [1000, 5000, 10000] if full else [1000]
            prefetch = [None if value == "default" else int(value) for value in args.b3_prefetch.split(",")]
            tables.append(suite.concurrency(tmp, counts, 4, 16 * 1024, prefetch[:1] if small else prefetch, env))
        elif name == "b4":
            size = int((args.b4_gib or (0.01 if small else 5 if full else 1)) * suite.GiB)
            tables.append(suite.huge_member(tmp, size, env))
        elif name == "b5":
            counts = _ints(args.b5_counts) if args.b5_counts else [10, 50] if small else \
                [10, 100, 1000, 10000] if full else [10, 100, 1000]
            tables.append(suite.first_byte(tmp, runs, counts, 0.005, env))
        elif name == "b6":
            size = (args.b6_mib or (4 if small else 1024 if full else 128)) * suite.MiB
            tables.append(suite.cpu_per_gb(tmp, size, env))
        elif name == "traffic":  # upstream bytes per download and per resume
            from . import upstream_traffic

            sizes = ["--files", "3", "--size-mib", "1", "--cuts", "2"] if small else []
            upstream_traffic.main([*sizes, "--results", str(args.results)])
        else:
            raise SystemExit(f"unknown benchmark {name!r}; known: {', '.join(ALL)}")
        print(f"   {name} took {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    return tables


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    command = " ".join(["python -m bench", *map(shlex.quote, argv)])
    if args.tmp is not None:
        args.tmp.mkdir(parents=True, exist_ok=True)
        tables = run(args, args.tmp)
    else:
        with tempfile.TemporaryDirectory(prefix="zipstream-bench-") as tmp:
            tables = run(args, Path(tmp))
    for table in tables:
        print(table.write(command, args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
