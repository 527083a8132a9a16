"""Upstream bytes read per download and per resume: what a cut download costs at the source.

Run: `python -m bench.upstream_traffic [--files 10] [--size-mib 20] [--cuts 5] [--ranges-fail]`.
Starts a local upstream and the real service (gunicorn, gevent worker), downloads a stored bundle in full,
then resumes it from several cut points, once with the CRC-32s learned by the full download and once on a
fresh service that has learned nothing. With --ranges-fail the upstream answers 500 to every ranged
request past byte 0 (plain GETs work), so each continuation reads its file whole and skips the bytes before
its offset: those bytes are in the figures, and in the service's zipstream_upstream_bytes_discarded.
Prints a Markdown table and writes bench/results/upstream_traffic.md (_ranges_fail.md with --ranges-fail).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.live import live_server  # noqa: E402 - after the path set-up
from tests.support.upstream import UpstreamServer  # noqa: E402


def _wait_completed(metrics_url: str, count: int, timeout: float = 30.0) -> None:
    """Until the service's /metrics counts `count` completed downloads (its stream has ended, CRCs stored)."""
    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(metrics_url, timeout=10).text
        done = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("zipstream_downloads_completed_total"))
        if done >= count or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def _upstream_bytes(upstream: UpstreamServer) -> int:
    return sum(upstream.bytes_sent.values())


def _discarded(server_url: str) -> int:
    """zipstream_upstream_bytes_discarded_total from the service's /metrics (0 if absent)."""
    text = requests.get(f"{server_url}/metrics", timeout=30).text
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("zipstream_upstream_bytes_discarded_total"))


def run(files: int, size_mib: int, cuts: int, seed: int = 1, ranges_fail: bool = False) -> str:
    rng = random.Random(seed)
    size = size_mib << 20
    rows = []
    with tempfile.TemporaryDirectory() as tmp, UpstreamServer() as upstream:
        tmp_path = Path(tmp)
        if ranges_fail:
            upstream.set_behaviour(None, range_status=500)
        for i in range(files):
            path = tmp_path / f"f{i}.bin"
            with path.open("wb") as handle:  # sparse body, real bytes at both ends
                handle.truncate(size)
                handle.write(os.urandom(1024))
            upstream.add_file(f"/f{i}.bin", path)
        srcs = [{"src": upstream.url(f"/f{i}.bin")} for i in range(files)]
        with live_server({}, tmp_path) as server:
            bundle = requests.post(server.url("/"), json={"files": srcs}, timeout=30).json()
            url = server.url(f"/{bundle['id']}")
            upstream.clear_log()
            before = _upstream_bytes(upstream)
            full = requests.get(url, timeout=600)
            length = len(full.content)
            full_read = _upstream_bytes(upstream) - before
            rows.append(("full download", length, full_read, full_read / max(1, sum(size for _ in range(files)))))
            # The CRC-32s the download learned are stored as its stream ends on the server, which can be just
            # after the client has its last byte: resume once the server counts the download completed.
            _wait_completed(server.url("/metrics"), 1)
            cut_points = sorted(rng.randrange(length // 10, length) for _ in range(cuts))
            learned = []
            for cut in cut_points:
                before = _upstream_bytes(upstream)
                # As a browser resumes: If-Range with the ETag (a bare Range is answered only inside
                # what this version already sent; here the full download did).
                part = requests.get(url, headers={"Range": f"bytes={cut}-", "If-Range": full.headers["ETag"]},
                                    timeout=600)
                assert part.content == full.content[cut:], "resume differs from the full download"
                learned.append((_upstream_bytes(upstream) - before) / max(1, length - cut))
            rows.append(("resume, CRCs learned", cuts, median(learned), max(learned)))
            discarded = _discarded(server.url("").rstrip("/"))
        with live_server({}, tmp_path) as fresh:  # a new port, so a new SQLite file: nothing learned
            bundle = requests.post(fresh.url("/"), json={"files": srcs}, timeout=30).json()
            url = fresh.url(f"/{bundle['id']}")
            # Nothing of this zip version went out from this service: a resume must prove its version.
            etag = requests.head(url, timeout=600).headers["ETag"]
            cold = []
            for cut in cut_points:
                before = _upstream_bytes(upstream)
                cold_part = requests.get(url, headers={"Range": f"bytes={cut}-", "If-Range": etag}, timeout=600)
                assert cold_part.status_code == 206, cold_part.status_code
                cold.append((_upstream_bytes(upstream) - before) / max(1, length - cut))
                break  # the first resume teaches the CRCs of everything it read; measure it alone
            rows.append(("resume, nothing learned", 1, median(cold), max(cold)))
    lines = [
        f"Bundle: {files} x {size_mib} MiB stored; zip length {length:,} bytes."
        + (" Upstream answers 500 to ranged requests past byte 0." if ranges_fail else ""),
        "",
        "| case | n | upstream bytes read | ratio |",
        "|---|---|---|---|",
        f"| full download | 1 | {rows[0][2]:,} | {rows[0][3]:.3f} x the files' total size |",
        f"| resume from a random cut, CRCs learned | {cuts} | median {rows[1][2]:.3f} x bytes after the cut "
        f"| max {rows[1][3]:.3f} |",
        f"| resume from a random cut, nothing learned | 1 | {rows[2][2]:.3f} x bytes after the cut "
        f"| (reads earlier members for their CRC) |",
        "",
        f"Bytes read only to be skipped (zipstream_upstream_bytes_discarded, full download + learned resumes): "
        f"{discarded:,}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--size-mib", type=int, default=20)
    parser.add_argument("--cuts", type=int, default=5)
    parser.add_argument("--ranges-fail", action="store_true",
                        help="the upstream answers 500 to ranged requests past byte 0 (results in a separate file)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    table = run(args.files, args.size_mib, args.cuts, ranges_fail=args.ranges_fail)
    out = args.results / ("upstream_traffic_ranges_fail.md" if args.ranges_fail else "upstream_traffic.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = f"python -m bench.upstream_traffic --files {args.files} --size-mib {args.size_mib} --cuts {args.cuts}"
    command += " --ranges-fail" if args.ranges_fail else ""
    out.write_text(f"# Upstream traffic per download and resume\n\n`{command}`\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
