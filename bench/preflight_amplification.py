"""Requests a hostile bundle makes a third party receive per download, at default settings (issue 14).

Run from the repository root: `.venv/bin/python -m bench.preflight_amplification [--sources 10000]`.
Real gunicorn (gevent worker), every setting default (PREFLIGHT_TIMEOUT 20 s, HTTP_TIMEOUT 30 s,
PREFLIGHT_CONCURRENCY 256, MAX_FILES 10,000); the third party is tests/support/counting.py, silent
(accepts, never answers) or busy (503 to everything). A one-off `POST /bundle` of N sources on it,
then the third party is watched for 5 s more. Writes bench/results/preflight_amplification.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import requests

from tests.support.counting import CountingUpstream
from tests.support.live import live_server

from .harness import Table

WATCH = 5.0


def measure(sources: int, behaviour: str, tmp: Path) -> tuple[object, ...]:
    with CountingUpstream(behaviour) as third_party, live_server({}, tmp) as server:
        files = [{"src": third_party.url(f"/file{index}.bin")} for index in range(sources)]
        started = time.monotonic()
        answer = requests.post(server.url("/bundle"), json={"files": files}, timeout=600)
        ended = time.monotonic()
        time.sleep(WATCH)
        arrivals = third_party.arrivals()
        per_source = third_party.per_path()
        return (behaviour, sources, answer.status_code, f"{ended - started:.1f} s", len(arrivals),
                len(per_source), max(per_source.values(), default=0),
                len(third_party.arrivals(since=ended)), f"{len(arrivals) / sources:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.preflight_amplification", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=10_000)
    args = parser.parse_args(argv)
    table = Table(
        "preflight_amplification", "Requests a third party receives per download of a hostile bundle",
        ("third party", "sources", "status", "answer after", "requests received", "sources asked",
         "max per source", f"after the answer ({WATCH:g} s watched)", "requests per source named"),
    )
    tmp = Path(tempfile.mkdtemp(prefix="zipstream-amplification-"))
    for behaviour in ("silent", "busy"):
        table.add(*measure(args.sources, behaviour, tmp))
    table.notes.append("silent: each of the PREFLIGHT_CONCURRENCY workers' one attempt waits until the deadline "
                       "(HTTP_TIMEOUT > PREFLIGHT_TIMEOUT); the other sources are never asked")
    table.notes.append("busy: at most 1 + 3 retries per source; the back-off (0.2 + 0.6 + 1.5 s) bounds how many "
                       "sources the 64 workers reach before the deadline")
    table.notes.append("'answer after' includes reading and checking the 10,000-entry body and writing the "
                       "10,000-source error (about 1-2 s on 2 cores)")
    print(table.write(f"python -m bench.preflight_amplification --sources {args.sources}"))


if __name__ == "__main__":
    main()
