"""`python -m bench [--only b1,b2,...] [--full] [--runs N] ...`: run benchmarks, print and save tables.

B1 big files, B2 many small files (total time), B3 10,000 slow readers of a small bundle, B4 one huge
member, B5 time to first byte, B6 CPU per GB, B7 CPU per pre-flighted source (and --profile), B8 memory
under slow clients of big files, B9 S3 requests per small object; `traffic`: upstream bytes per resume.
Upstream: Debian's nginx (installed on first use, as root), latency added inside it by the echo module;
every timed table reports, beside the service's time, the limit it is measured against.

The default run keeps most sizes moderate (several minutes on 2 cores); `--small` is a smoke test (about
a minute); `--full` uses the full sizes (2 x 1 GiB, a 5 GiB member, 10,000 concurrent downloads, 10,000
slow clients of 3 x 8 MiB: B8 then drains 240 GB through the loopback, which takes long).
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

ALL = ("b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9", "traffic")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated benchmarks (default: all)")
    parser.add_argument("--full", action="store_true",
                        help="full sizes: 2 x 1 GiB, a 5 GiB member, 10,000 files, 10,000 downloads, 10,000 slow "
                             "clients of 3 x 8 MiB (B8 alone then drains 240 GB: long; --b8-rcvbuf 65536 drains "
                             "faster)")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--tmp", type=Path, default=None,
                        help="directory for test files (kept between runs; default: a temporary one)")
    parser.add_argument("--b1-big-mib", type=int, default=None, help="size of the 2 big files (MiB)")
    parser.add_argument("--b2-files", type=int, default=1000)
    parser.add_argument("--b3-counts", default=None, help="simultaneous downloads, e.g. 1000,5000,10000")
    parser.add_argument("--b3-prefetch", default="default,0", help="PREFETCH values for B3 ('default' = unset)")
    parser.add_argument("--b4-gib", type=float, default=None, help="size of the huge member (GiB)")
    parser.add_argument("--b5-counts", default=None, help="files per bundle (default 1000,10000)")
    parser.add_argument("--b6-mib", type=int, default=None, help="data streamed per compression (MiB)")
    parser.add_argument("--b7-files", type=int, default=None, help="sources in the CPU-per-source bundle (2000)")
    parser.add_argument("--profile", action="store_true",
                        help="B7: also sample the worker with py-spy (pip-installed if missing); b7_profile.md")
    parser.add_argument("--b8-counts", default=None, help="slow downloads, e.g. 300,1000 (default 100; --full 10000)")
    parser.add_argument("--b8-stall", type=float, default=None, help="seconds the slow clients stall (default 10)")
    parser.add_argument("--b8-fast", type=int, default=2, help="fast clients during the stall")
    parser.add_argument("--b8-files", default="3x8", help="the bundle: COUNTxMIB (default 3x8)")
    parser.add_argument("--b8-rcvbuf", type=int, default=4096,
                        help="the slow clients' SO_RCVBUF in bytes (default 4096, as B3)")
    parser.add_argument("--b9-objects", type=int, default=None, help="small S3 objects in the bundle (200)")
    parser.add_argument("--latency-ms", type=float, default=20.0,
                        help="upstream latency per request for B2, B5, B7, B9 (ms, default 20)")
    parser.add_argument("--parallel", type=int, default=64,
                        help="connections of the best concurrent direct fetch (the limit; default 64)")
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
    latency = args.latency_ms / 1000
    parallel = args.parallel
    tmp = tmp.resolve()
    tables = []
    for name in only:
        began = time.perf_counter()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        if name == "b1":
            big = args.b1_big_mib or (1 if small else 1024 if full else 256)
            cases = [(3, 64 * 1024)] if small else [(20, 10 * suite.MiB)]
            cases.append((2, big * suite.MiB))
            tables.extend(suite.big_files(tmp, runs, cases, env, parallel))
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
            tables.append(suite.small_files(tmp, runs, count, 16 * 1024, latency, variants, env, parallel))
        elif name == "b3":
            counts = _ints(args.b3_counts) if args.b3_counts else [20] if small else \
                [1000, 5000, 10000] if full else [1000]
            prefetch = [None if value == "default" else int(value) for value in args.b3_prefetch.split(",")]
            tables.append(suite.concurrency(tmp, counts, 4, 16 * 1024, prefetch[:1] if small else prefetch, env))
        elif name == "b4":
            size = int((args.b4_gib or (0.01 if small else 5 if full else 1)) * suite.GiB)
            tables.append(suite.huge_member(tmp, size, env))
        elif name == "b5":
            counts = _ints(args.b5_counts) if args.b5_counts else [10, 50] if small else [1000, 10000]
            tables.append(suite.first_byte(tmp, runs, counts, 16 * 1024, latency, env, parallel))
        elif name == "b6":
            size = (args.b6_mib or (4 if small else 1024 if full else 128)) * suite.MiB
            tables.append(suite.cpu_per_gb(tmp, runs, size, env))
        elif name == "b7":
            count = args.b7_files or (50 if small else 2000)
            profile = args.results / "b7_profile.raw" if args.profile else None
            tables.extend(suite.cpu_per_source(tmp, runs, count, 16 * 1024, latency, env, profile))
        elif name == "b8":
            counts = _ints(args.b8_counts) if args.b8_counts else [5] if small else [10000] if full else [100]
            stall = args.b8_stall if args.b8_stall is not None else 1.0 if small else 30.0 if full else 10.0
            files, mib = (int(part) for part in args.b8_files.lower().split("x"))
            tables.append(suite.slow_clients(tmp, counts, files, (1 if small else mib) * suite.MiB, stall,
                                             args.b8_fast, runs, env, args.b8_rcvbuf))
        elif name == "b9":
            from . import s3_requests

            count = args.b9_objects or (10 if small else 200)
            tables.append(s3_requests.s3_requests(tmp, runs, count, 16 * 1024, latency, parallel, env))
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
