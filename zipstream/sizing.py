"""How many CPUs this process may really use: affinity and cgroup CPU quotas, not the host's count.

`os.cpu_count()` is the host's: a pod limited to 1 CPU on a 64-core node would start 64 gunicorn
workers (each with its own DB_POOL_SIZE connections). The paths are parameters so tests can pass
fake cgroup trees.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_quota(cgroup_root: Path, self_cgroup: Path) -> float | None:
    """CPUs allowed by cgroup v2 `cpu.max` ("<quota> <period>" or "max <period>"), tightest on the path."""
    relative = "/"
    for line in (_read(self_cgroup) or "").splitlines():
        if line.startswith("0::"):
            relative = line[3:] or "/"
    # Walk from this process's cgroup up to the root: a parent's limit binds its children too.
    # (Inside a container the namespace root is usually the process's own cgroup.)
    limits: list[float] = []
    here = cgroup_root / relative.lstrip("/")
    while True:
        fields = (_read(here / "cpu.max") or "").split()
        if len(fields) == 2 and fields[0] != "max":
            try:
                quota, period = int(fields[0]), int(fields[1])
            except ValueError:
                quota = period = 0
            if quota > 0 and period > 0:
                limits.append(quota / period)
        if here == cgroup_root or cgroup_root not in here.parents:
            break
        here = here.parent
    return min(limits) if limits else None


def _v1_quota(cgroup_root: Path) -> float | None:
    """CPUs allowed by cgroup v1's CFS quota (`cpu.cfs_quota_us` / `cpu.cfs_period_us`; -1: none)."""
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota, period = _read(cgroup_root / name / "cpu.cfs_quota_us"), _read(cgroup_root / name / "cpu.cfs_period_us")
        if quota is None or period is None:
            continue
        try:
            quota_us, period_us = int(quota), int(period)
        except ValueError:
            continue
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    return None


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP,
                affinity: int | None = None) -> int:
    """Whole CPUs this process may use (>= 1): the CPUs it may run on, capped by a cgroup CPU quota.

    `affinity` is the number of CPUs in the process's CPU set (default: `os.sched_getaffinity`, or
    `os.cpu_count()` where that does not exist). A quota of 1.5 CPUs counts as 2: a worker may use
    the half. cgroup v2 (`cpu.max`) is read first, then v1's CFS quota.
    """
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = os.cpu_count() or 1
    quota = _v2_quota(cgroup_root, self_cgroup)
    if quota is None:
        quota = _v1_quota(cgroup_root)
    cpus = affinity if quota is None else min(affinity, math.ceil(quota))
    return max(1, cpus)


def default_workers(web_concurrency: int | None, cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP,
                    affinity: int | None = None) -> int:
    """gunicorn workers: `web_concurrency` (WEB_CONCURRENCY) when set, else one per usable CPU, at least 2.

    Two at least, so one worker busy with CPU work (deflate) or restarting never leaves the
    instance with nobody to answer.
    """
    if web_concurrency is not None:
        return web_concurrency
    return max(2, usable_cpus(cgroup_root, self_cgroup, affinity))
