"""Tests that aim at non-loopback destinations run in a network namespace whose only interface is loopback.

A test that checks that a private, site-local or public address, a name not in /etc/hosts or a
redirect to one is refused must not depend on the refusal to keep its packets home: a regression
would send them (or a DNS query) off the machine. Inside `unshare --net`, with `lo` up, there is no
route and no resolver to reach, so a regression fails the test instead of leaking.

Mark such tests `@pytest.mark.loopback_only` (a module: `pytestmark = pytest.mark.loopback_only`). In
the suite's own process a marked test does not run its body: the first one reached runs every
marked test selected in the session, in one child pytest inside a fresh namespace, and each then
reports the child's outcome for itself (with the child's failure text). In the child
(`ZIPSTREAM_NETNS=1`) they run as usual, once the namespace is seen to hold nothing but `lo`.
The child's loopback is its own: servers a marked test uses must be started by the test (the
parent's PostgreSQL or moto are not reachable from there).

No `unshare`/`ip`, or no permission to make a namespace: skipped locally, failed on CI (`ci.missing`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import ci

MARKER = "loopback_only"
INSIDE = "ZIPSTREAM_NETNS"  # "1" in the child pytest
_SELECTION = "ZIPSTREAM_NETNS_SELECT"  # a file listing the node ids the child runs
_REPORT = "ZIPSTREAM_NETNS_REPORT"  # a file the child appends one JSON line per test phase to
# The whole marked corpus, its servers included, runs in well under a minute; past this it is hung.
CHILD_TIMEOUT = 900


def inside() -> bool:
    """True in the child pytest that runs the marked tests."""
    return os.environ.get(INSIDE) == "1"


def interfaces() -> list[str]:
    """Names of this process's network interfaces (`["lo"]` inside the namespace)."""
    return [name for _index, name in socket.if_nameindex()]


def command(argv: Sequence[str]) -> list[str]:
    """`argv` to run in a new network namespace whose only interface, `lo`, is up.

    As root, `unshare --net`; otherwise inside a user namespace too (`--map-root-user`), which
    gives the capability `ip link set lo up` needs.
    """
    unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--net"]
    return [*unshare, "--", "sh", "-c", 'ip link set lo up && exec "$@"', "netns", *argv]


def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(argv)` inside a fresh loopback-only namespace (text mode)."""
    return subprocess.run(command(argv), text=True, check=False, **kwargs)


def unavailable() -> str | None:
    """Why no loopback-only namespace can be made here, or None when one can."""
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (util-linux, iproute2): the loopback-only tests need a network namespace"
    probe = run([sys.executable, "-c", "import socket; print([n for _, n in socket.if_nameindex()])"],
                capture_output=True, timeout=60)
    if probe.returncode != 0:
        return f"cannot make a network namespace (`unshare --net`): {probe.stderr.strip()[-300:]}"
    if probe.stdout.strip() != "['lo']":
        return f"the new network namespace is not loopback-only: {probe.stdout.strip()}"
    return None


def require() -> None:
    """Return if a loopback-only namespace can be made; skip the test locally, fail it on CI otherwise."""
    reason = unavailable()
    if reason is not None:
        ci.missing(reason, "install util-linux and iproute2 and run the tests as root (or where user "
                           "namespaces are allowed)")


@dataclass(frozen=True)
class Outcome:
    """What the child reported for one test: passed, failed or skipped, and the text to show."""

    outcome: str
    text: str = ""


class _ChildFailure(Exception):
    """A marked test failed in the child; the message is the child's report."""


class _Corpus:
    """The marked tests of this session, run together in one child on first use."""

    def __init__(self, config: pytest.Config, nodeids: list[str], paths: list[str]) -> None:
        self.config = config
        self.nodeids = nodeids
        self.paths = paths
        self.outcomes: dict[str, Outcome] | None = None

    def outcome(self, nodeid: str) -> Outcome:
        require()  # every marked test skips (locally) or fails (CI) on its own without a namespace
        if self.outcomes is None:
            self.outcomes = self._run()
        return self.outcomes.get(nodeid) or Outcome("failed", f"{nodeid} did not report from the namespace")

    def _run(self) -> dict[str, Outcome]:
        with tempfile.TemporaryDirectory(prefix="zipstream-netns-") as tmp:
            selection, report = Path(tmp) / "select", Path(tmp) / "report.jsonl"
            selection.write_text("\n".join(self.nodeids))
            env = {**os.environ, INSIDE: "1", _SELECTION: str(selection), _REPORT: str(report)}
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                    str(self.config.rootpath), *self.paths]
            try:
                child = run(argv, cwd=self.config.rootpath, env=env, capture_output=True, timeout=CHILD_TIMEOUT)
                output = child.stdout + child.stderr
            except subprocess.TimeoutExpired as error:
                output = f"the child pytest did not finish within {CHILD_TIMEOUT} s: {error}"
            lines = report.read_text().splitlines() if report.exists() else []
        outcomes: dict[str, Outcome] = {}
        for line in lines:
            phase = json.loads(line)
            seen = outcomes.get(phase["nodeid"])
            if seen is not None and seen.outcome != "passed":
                continue  # the first phase that did not pass decides
            if phase["outcome"] != "passed" or seen is None:
                outcomes[phase["nodeid"]] = Outcome(phase["outcome"], phase["text"])
        missing = [nodeid for nodeid in self.nodeids if nodeid not in outcomes]
        for nodeid in missing:
            outcomes[nodeid] = Outcome("failed", f"no report from the namespace; the child said:\n{output[-4000:]}")
        return outcomes


class IsolatedTest(pytest.Item):
    """Stands in, in the suite's process, for a marked test: reports its outcome in the namespace."""

    def __init__(self, *, original: pytest.Item, corpus: _Corpus, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.original = original
        self.corpus = corpus
        self.own_markers = list(original.own_markers)
        self.keywords.update(original.keywords)

    def runtest(self) -> None:
        result = self.corpus.outcome(self.nodeid)
        if result.outcome == "skipped":
            pytest.skip(result.text)
        if result.outcome != "passed":
            raise _ChildFailure(result.text)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, _ChildFailure):
            return f"(run in a loopback-only network namespace)\n{excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.original.reportinfo()


@pytest.hookimpl(trylast=True)  # after -k / -m / --deselect have chosen the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if inside():
        _select_in_child(config, items)
        return
    marked = [item for item in items if item.get_closest_marker(MARKER) is not None]
    if not marked:
        return
    corpus = _Corpus(config, [item.nodeid for item in marked], sorted({str(item.path) for item in marked}))
    chosen = {id(item) for item in marked}
    items[:] = [
        IsolatedTest.from_parent(item.parent, name=item.name, nodeid=item.nodeid, original=item, corpus=corpus)
        if id(item) in chosen else item
        for item in items
    ]


def _select_in_child(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the child: refuse to run outside a loopback-only namespace, then keep only the chosen tests."""
    if interfaces() != ["lo"]:
        raise pytest.UsageError(f"{INSIDE}=1 but this network namespace has {interfaces()}, not only lo")
    wanted = set(Path(os.environ[_SELECTION]).read_text().splitlines()) if _SELECTION in os.environ else None
    if wanted is None:
        return
    keep = [item for item in items if item.nodeid in wanted]
    dropped = [item for item in items if item.nodeid not in wanted]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not inside() or _REPORT not in os.environ:
        return
    text = report.longreprtext
    if report.skipped and isinstance(report.longrepr, tuple):
        text = str(report.longrepr[2])
    with open(os.environ[_REPORT], "a", encoding="utf-8") as out:
        out.write(json.dumps({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                              "text": text}) + "\n")
