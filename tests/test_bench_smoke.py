"""The benchmark code still runs (tiny sizes, no timing asserted): CI notices if bench/ rots."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import main


def test_bench_runs_at_tiny_sizes(tmp_path: Path) -> None:
    results = tmp_path / "results"
    assert main(["--small", "--only", "b1,b3", "--tmp", str(tmp_path / "files"),
                 "--results", str(results)]) == 0
    written = {path.name for path in results.iterdir()}
    assert written == {"b1_big_files.md", "b3_concurrency.md"}
    b3 = (results / "b3_concurrency.md").read_text()
    assert "| 20 | default | 20 | 0 |" in b3  # every download complete and byte-correct, no errors
