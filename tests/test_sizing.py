"""gunicorn workers from the CPUs the process may use: fake cgroup trees in temp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from zipstream.config import WEB_CONCURRENCY
from zipstream.sizing import default_workers, usable_cpus


def tree(tmp_path: Path, files: dict[str, str], own: str = "/") -> tuple[Path, Path]:
    """A fake /sys/fs/cgroup with `files` (relative path -> text), and a /proc/self/cgroup naming `own`."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text(f"0::{own}\n")
    return root, self_cgroup


def test_no_cgroup_limits_uses_the_cpu_set(tmp_path: Path) -> None:
    root, own = tree(tmp_path, {"cpu.max": "max 100000"})
    assert usable_cpus(root, own, affinity=64) == 64


def test_v2_quota_caps_a_big_host(tmp_path: Path) -> None:
    root, own = tree(tmp_path, {"cpu.max": "100000 100000"})  # 1 CPU on a 64-core node
    assert usable_cpus(root, own, affinity=64) == 1
    assert default_workers(None, root, own, affinity=64) == 2  # never fewer than two workers


@pytest.mark.parametrize(("quota", "cpus"), [("150000 100000", 2), ("50000 100000", 1), ("250000 50000", 5)])
def test_v2_fractional_quota_rounds_up(tmp_path: Path, quota: str, cpus: int) -> None:
    root, own = tree(tmp_path, {"cpu.max": quota})
    assert usable_cpus(root, own, affinity=64) == cpus


def test_v2_the_tightest_limit_on_the_path_wins(tmp_path: Path) -> None:
    root, own = tree(tmp_path, {
        "cpu.max": "max 100000",
        "kubepods/cpu.max": "200000 100000",
        "kubepods/pod1/cpu.max": "400000 100000",
        "kubepods/pod1/app/cpu.max": "max 100000",
    }, own="/kubepods/pod1/app")
    assert usable_cpus(root, own, affinity=64) == 2


def test_cpu_set_smaller_than_quota(tmp_path: Path) -> None:
    root, own = tree(tmp_path, {"cpu.max": "800000 100000"})
    assert usable_cpus(root, own, affinity=3) == 3


@pytest.mark.parametrize("directory", ["cpu", "cpu,cpuacct"])
def test_v1_cfs_quota_when_there_is_no_v2(tmp_path: Path, directory: str) -> None:
    root, own = tree(tmp_path, {f"{directory}/cpu.cfs_quota_us": "300000",
                                f"{directory}/cpu.cfs_period_us": "100000"})
    assert usable_cpus(root, own, affinity=64) == 3


def test_v1_unlimited_quota(tmp_path: Path) -> None:
    root, own = tree(tmp_path, {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert usable_cpus(root, own, affinity=6) == 6


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path / "absent", tmp_path / "absent-self", affinity=4) == 4


def test_garbage_is_ignored(tmp_path: Path) -> None:
    root, own = tree(tmp_path, {"cpu.max": "lots 0", "cpu/cpu.cfs_quota_us": "x", "cpu/cpu.cfs_period_us": "y"})
    assert usable_cpus(root, own, affinity=5) == 5


def test_web_concurrency_wins(tmp_path: Path) -> None:
    """WEB_CONCURRENCY's own parsing (blank, `0`, `+7`...) is in tests/test_config.py."""
    root, own = tree(tmp_path, {"cpu.max": "100000 100000"})
    assert default_workers(WEB_CONCURRENCY.read({"WEB_CONCURRENCY": "7"}), root, own, affinity=64) == 7
    assert default_workers(WEB_CONCURRENCY.read({"WEB_CONCURRENCY": " "}), root, own, affinity=64) == 2
    assert default_workers(1, root, own, affinity=64) == 1


def test_this_machine() -> None:
    assert 1 <= usable_cpus() <= 4096
