"""The benchmark code still runs (tiny sizes, no timing asserted): CI notices if bench/ rots."""

from __future__ import annotations

import re
from pathlib import Path

from bench.__main__ import main


def test_bench_runs_at_tiny_sizes(tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert main(["--small", "--only", "b1,b3", "--tmp", str(tmp_path / "files"),
                 "--results", str(results)]) == 0
    written = {path.name for path in results.iterdir()}
    assert written == {"b1_big_files.md", "b1_cpu.md", "b3_concurrency.md"}
    bound = (results / "b1_cpu.md").read_text()
    assert bound.count("ZipStream GET /:id") == 2 and bound.count("least Python relay (bench/") == 2  # both cases
    b3 = (results / "b3_concurrency.md").read_text()
    assert "| 20 | default | 20 | 0 |" in b3  # every download complete and byte-correct, no errors


def test_upstream_traffic_bench_runs_at_tiny_sizes(tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert main(["--small", "--only", "traffic", "--results", str(results)]) == 0
    table = (results / "upstream_traffic.md").read_text()
    # A full download reads each source exactly once; a resume with learned CRCs reads only what follows the cut.
    assert "| full download | 1 | 3,145,728 | 1.000 x the files' total size |" in table
    learned = re.search(r"CRCs learned \| 2 \| median ([0-9.]+) x bytes after the cut \| max ([0-9.]+)", table)
    assert learned, table
    assert float(learned.group(2)) <= 1.0
