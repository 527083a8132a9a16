"""zipstream.stream: a prepared zip's bytes from a real upstream, read ahead (PREFETCH), from any offset,
cut when a member fails, its upstream bodies closed when the download is.
"""

from __future__ import annotations

import gc
import io
import os
import re
import socket
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests

from zipstream import memory
from zipstream.chunks import CHUNK_SIZE
from zipstream.config import Config
from zipstream.download import PreparedZip, prepare
from zipstream.errors import StreamAborted
from zipstream.memory import Account, ClientWindow, MemoryBudget
from zipstream.models import FileRef
from zipstream.sources import build_sources
from zipstream.stream import RELEASE_AFTER

from .support.live import LiveServer
from .support.stalled import drain, stall
from .support.upstream import UpstreamServer
from .support.waiting import wait_for


def _config(tmp_path: Path, **env: str) -> Config:
    return Config.from_env({"SQLITE_PATH": str(tmp_path / "z.sqlite3"), "FS_INTERFACES": "https",
                            "HTTP_ALLOW_PRIVATE": "true", **env})


@pytest.mark.parametrize("compression", ["stored", "deflate"])
def test_zip_of_many_members_is_byte_correct_with_prefetch(
    tmp_path: Path, upstream: UpstreamServer, compression: str
) -> None:
    contents = {f"/f{i:03d}.bin": bytes([i % 256]) * (i * 37) for i in range(120)}
    for path, data in contents.items():
        upstream.add(path, data)
    upstream.set_behaviour(latency=0.005)
    config = _config(tmp_path, PREFETCH="6", PREFETCH_BYTES="262144")
    files = [FileRef(src=upstream.url(path)) for path in contents]
    prepared = prepare(files, "b.zip", compression, 0, build_sources(config), None, config)
    archive = zipfile.ZipFile(io.BytesIO(b"".join(prepared.stream())))
    assert archive.namelist() == [path[1:] for path in contents]
    for path, data in contents.items():
        assert archive.read(path[1:]) == data


def _prepared(tmp_path: Path, upstream: UpstreamServer, prefix: str, count: int, size: int,
              prefetch: int) -> tuple[PreparedZip, dict[str, bytes]]:
    """A stored zip of `count` members of `size` bytes served by `upstream`, and their contents by path."""
    contents = {f"/{prefix}{i}.bin": bytes([i]) * size for i in range(count)}
    for path, data in contents.items():
        upstream.add(path, data)
    config = _config(tmp_path, PREFETCH=str(prefetch))
    files = [FileRef(src=upstream.url(path)) for path in contents]
    return prepare(files, "b.zip", "stored", 0, build_sources(config), None, config), contents


def test_resume_from_the_middle_uses_prefetch_and_matches_the_whole(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    prepared, _ = _prepared(tmp_path, upstream, "r", 10, 50_000, prefetch=3)
    whole = b"".join(prepared.stream())
    assert b"".join(prepared.stream(123_456)) == whole[123_456:]
    assert b"".join(prepared.stream(1000, 300_000)) == whole[1000:300_000]


def test_failing_member_aborts_the_zip_after_earlier_members(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    prepared, contents = _prepared(tmp_path, upstream, "e", 6, 100_000, prefetch=4)
    upstream.set_behaviour("/e3.bin", status=404)  # after pre-flight: fails inside a read-ahead
    received = bytearray()

    def download() -> None:
        for chunk in prepared.stream():
            received.extend(chunk)

    with pytest.raises(StreamAborted, match=r"e3\.bin"):
        download()
    # Everything of members 0-2 went out before the abort; none of member 3's data did.
    for path in ("/e0.bin", "/e1.bin", "/e2.bin"):
        assert contents[path] in received
    assert bytes([3]) * 1000 not in received


def test_closing_the_download_early_closes_upstream_bodies(tmp_path: Path, upstream: UpstreamServer) -> None:
    size = 16 * 1024 * 1024
    contents = {f"/big{i}.bin": bytes([i]) * size for i in range(5)}
    for path, data in contents.items():
        upstream.add(path, data)
    config = _config(tmp_path, PREFETCH="4", PREFETCH_BYTES="1048576")
    files = [FileRef(src=upstream.url(path)) for path in contents]
    prepared = prepare(files, "b.zip", "stored", 0, build_sources(config), None, config)
    baseline = threading.active_count()
    stream = prepared.stream()
    next(stream)  # the first local header
    next(stream)  # member 0's first chunk: the read-ahead is running now
    # The read-ahead's GET asks no Range; pre-flight's (already logged) asked `bytes=0-0`. Members are
    # opened in order as memory allows: with 1 MiB of read-ahead, member 1 is.
    wait_for(lambda: None in upstream.ranges_for("/big1.bin"), "read-ahead reached member 1")
    stream.close()  # the client went away
    wait_for(lambda: threading.active_count() <= baseline, "prefetch workers ended")
    # Cut bodies were closed: no member was sent whole (sockets hold a few MiB at most).
    sent = upstream.bytes_sent
    assert all(sent.get(path, 0) < size for path in contents), sent


def test_prefetch_under_gunicorn_gevent_worker(
    serve: Callable[..., LiveServer], upstream: UpstreamServer
) -> None:
    contents = {f"/g{i:02d}.txt": f"file {i}\n".encode() * (i + 1) * 100 for i in range(60)}
    for path, data in contents.items():
        upstream.add(path, data)
    upstream.set_behaviour(latency=0.01)
    server = serve(PREFETCH="8", ACCESS_LOG="/dev/null")
    body = {"files": [{"src": upstream.url(path)} for path in contents], "compression": "deflate"}
    response = requests.post(server.url("/bundle"), json=body, timeout=30)
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    for path, data in contents.items():
        assert archive.read(path[1:]) == data


# -- memory: every download gives back what it was granted, however it ends --------------------------

@pytest.fixture
def worker_memory() -> Iterator[MemoryBudget]:
    """The process's MemoryBudget, with nothing granted before the test; its size restored after."""
    gc.collect()  # a Head of an earlier test gives its bytes back when collected
    budget = memory.worker_budget()
    total = budget.total
    assert budget.used == 0, "an earlier download kept memory"
    yield budget
    memory.configure(total)


@pytest.mark.parametrize("prefetch", [0, 4])
@pytest.mark.parametrize("ending", ["completed", "source_failed", "closed_early", "client_gone"])
def test_every_download_gives_its_memory_back(
    tmp_path: Path, upstream: UpstreamServer, worker_memory: MemoryBudget, monkeypatch: pytest.MonkeyPatch,
    prefetch: int, ending: str,
) -> None:
    prepared, _ = _prepared(tmp_path, upstream, f"m{ending}{prefetch}-", 5, 300_000, prefetch=prefetch)
    whole_zip = prepared.plan.length
    peak = 0
    if ending == "source_failed":
        upstream.set_behaviour(f"/m{ending}{prefetch}-3.bin", status=404)
    stream = prepared.stream()
    received = bytearray()
    if ending == "client_gone":
        # The budget is taken by other downloads; this one's client hangs up while it waits.
        monkeypatch.setattr(memory, "WAIT_POLL", 0.01)
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        listener.close()
        prepared.body.client = ClientWindow(server)
        others = Account(worker_memory)
        assert others.acquire(worker_memory.total)
        client.close()
        with pytest.raises(StreamAborted):
            received.extend(b"".join(stream))
        others.close()
        server.close()
    elif ending == "closed_early":
        received.extend(next(stream))
        received.extend(next(stream))
        peak = worker_memory.used
        stream.close()
    else:
        try:
            for chunk in stream:
                received.extend(chunk)
                peak = max(peak, worker_memory.used)
        except StreamAborted:
            assert ending == "source_failed"
        else:
            assert ending == "completed" and len(received) == whole_zip
    if ending != "client_gone":
        assert peak > 0  # the download was granted memory while it ran
    assert worker_memory.used == 0 and worker_memory.ahead == 0


def test_a_stalled_downloads_read_ahead_keeps_no_other_download_waiting(
    tmp_path: Path, upstream: UpstreamServer, worker_memory: MemoryBudget,
) -> None:
    # A budget whose share for read-ahead one download fills (its client never reads on).
    memory.configure(4 * 1024 * 1024)
    worker_memory.peak = 0
    stalled, _ = _prepared(tmp_path, upstream, "stall", 4, 3_000_000, prefetch=4)
    other, contents = _prepared(tmp_path, upstream, "other", 4, 3_000_000, prefetch=4)
    stuck = stalled.stream()
    next(stuck)
    next(stuck)
    wait_for(lambda: worker_memory.ahead >= worker_memory.ahead_limit - 1024 * 1024, "read-ahead filled its share")
    archive = zipfile.ZipFile(io.BytesIO(b"".join(other.stream())))
    for path, data in contents.items():
        assert archive.read(path[1:]) == data
    assert worker_memory.peak <= worker_memory.total + 1024 * 1024  # a chunk may be larger than asked
    stuck.close()
    assert worker_memory.used == 0


# -- parking: a download whose client stalls gives back all it holds, and goes on where it was ----------

def _metric(server: LiveServer, name: str) -> float:
    """The sum over the workers of one metric from /metrics."""
    total = 0.0
    for line in requests.get(server.url("/metrics"), timeout=10).text.splitlines():
        if line.split("{", 1)[0].split(" ", 1)[0] == name:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_under_gunicorn_stalled_downloads_park_so_a_fast_one_is_served_and_each_goes_on_where_it_was(
    serve: Callable[..., LiveServer], upstream: UpstreamServer,
) -> None:
    """Before parking, clients that stopped reading kept what their downloads held (their last chunk,
    read-ahead, pre-flight's holds) until SEND_TIMEOUT: with MEMORY_BUDGET full of it, a new download
    waited for all of that time (issue 16: 10,000 slow clients, 7,905 downloads waiting; here 300 at the
    smallest budget)."""
    files = {f"/big{i}.bin": os.urandom(CHUNK_SIZE) for i in range(3)}
    for name, data in files.items():
        upstream.add(name, data)
    server = serve(MEMORY_BUDGET=str(4 * CHUNK_SIZE), ACCESS_LOG="/dev/null")
    created = requests.post(server.url("/"), json={"files": [{"src": upstream.url(name)} for name in files]},
                            timeout=30)
    path = f"/{created.json()['id']}"
    # Stalled before any download completed: no CRC-32 is known, the zip has data descriptors, and a
    # download that parks inside a member must carry the CRC-32 of what it sent over.
    stalled = [stall(server.port, path, receive_buffer=65536) for _ in range(120)]
    upstream.clear_log()
    # What they hold fills the budget: a new download waits until some park (PARK_POLL, ~1 s).
    whole = requests.get(server.url(path), timeout=20).content
    assert [zipfile.ZipFile(io.BytesIO(whole)).read(name.strip("/")) for name in files] == list(files.values())
    # The rest park too, once stalled PARK_AFTER s: every byte given back, each connection still open.
    wait_for(lambda: _metric(server, "zipstream_memory_granted_bytes") == 0
             and _metric(server, "zipstream_downloads_parked") == len(stalled), "every stalled download parked",
             timeout=30)
    for sock, body in stalled:
        assert drain(sock, body) == whole
    # Each went on with ranged reads of the same version (If-Range or If-Match on every ranged request).
    ranged = [r for r in upstream.requests if re.fullmatch(r"bytes=[1-9][0-9]*-", r.range or "")]
    assert ranged and all("if-range" in r.headers or "if-match" in r.headers for r in ranged)
    wait_for(lambda: _metric(server, "zipstream_downloads_parked") == 0, "no download left parked")
    assert "Traceback" not in server.log_text()


class _ParkingClient:
    """A client that drains nothing: the first wait asks to park at once, the park's own wait checks what
    the server (the consumer) and the stream's frame still hold, then the client reads again."""

    def __init__(self, consumer_saw: list[bytes]) -> None:
        self.consumer_saw = consumer_saw
        self.room = 256 * 1024
        self.stream: Iterator[bytes] | None = None
        self.held_at_park: list[int] | None = None

    def sending(self) -> None: ...
    def sent(self) -> None: ...
    def handed(self, count: int) -> None: ...
    def read_size(self) -> int:
        return 16 * 1024
    def gone(self) -> bool:
        return False

    def wait_writable(self, park: Callable[[float], bool] | None = None) -> bool:
        if park is not None and self.held_at_park is None:
            return False  # park now
        if park is None:  # the park's wait: nothing of the stream's bytes may be held now
            frame = self.stream.gi_frame  # type: ignore[union-attr]
            held = [len(value) for value in frame.f_locals.values() if isinstance(value, bytes) and value]
            self.held_at_park = held + ([len(self.consumer_saw[-1])] if self.consumer_saw[-1] else [])
        return True


def test_a_parked_download_lets_go_of_the_last_piece_it_sent(tmp_path: Path, upstream: UpstreamServer) -> None:
    """While parked, a download holds no grant, so no chunk either: not in its own frame, and not in the
    server's (gunicorn's `for item in body` keeps the last item until it asks for the next, so the stream
    hands it an empty one first). Before: 58 KiB per parked download at 1,000 (bench.memory_probe)."""
    prepared, _ = _prepared(tmp_path, upstream, "p", 2, 300_000, prefetch=2)
    whole = b"".join(prepared.stream())
    saw: list[bytes] = []
    client = _ParkingClient(saw)
    prepared.body.client = client  # type: ignore[assignment]
    stream = client.stream = prepared.stream()
    for item in stream:
        saw.append(item)
    assert client.held_at_park == []
    assert b"".join(saw) == whole


def test_a_download_that_parks_looks_whether_the_heap_it_freed_can_go_back(
    tmp_path: Path, upstream: UpstreamServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parking frees a whole pipeline (bodies, buffers, read-ahead) while the download stays: glibc keeps
    the holes resident unless given back (chunks.give_back_freed_heap, as when a download ends)."""
    from zipstream import stream as stream_module

    looks: list[int] = []
    monkeypatch.setattr(stream_module, "give_back_freed_heap_now_and_then", lambda: looks.append(1) or False)
    prepared, _ = _prepared(tmp_path, upstream, "g", 2, 300_000, prefetch=2)
    client = _ParkingClient([b""])
    prepared.body.client = client  # type: ignore[assignment]
    client.stream = prepared.stream()
    for _ in client.stream:
        pass
    assert client.held_at_park is not None and looks == [1]


class _KeepingPace:
    """A client that takes every byte at once (ClientWindow's interface, without a socket)."""

    room = 1 << 30

    def sending(self) -> None: ...
    def sent(self) -> None: ...
    def handed(self, count: int) -> None: ...
    def read_size(self) -> int:
        return CHUNK_SIZE
    def gone(self) -> bool:
        return False
    def wait_writable(self, park: Callable[[float], bool] | None = None) -> bool:
        return True


class _Chunk(bytes):
    """bytes whose end is seen (bytes take no weak references) on their way up through every layer."""

    alive: ClassVar[set[int]] = set()

    def __del__(self) -> None:
        _Chunk.alive.discard(id(self))


def test_while_a_download_reads_its_next_chunk_nothing_above_holds_the_last_one(
    tmp_path: Path, upstream: UpstreamServer,
) -> None:
    """A download's grant covers one chunk (memory.Account): the next is read within it. Before, every layer
    (the zip writer, the source's reader, the turns, the server's `for item in body`) still held the last
    chunk while the next was read, so a worker held up to twice what it was granted (bench.memory_probe:
    137 MiB of chunks referenced at a drain's peak, 95 MiB granted)."""
    prepared, contents = _prepared(tmp_path, upstream, "h", 3, 5 * CHUNK_SIZE // 2, prefetch=0)
    zipped = prepared.body
    zipped.client = _KeepingPace()  # type: ignore[assignment]
    open_source = zipped._open_source
    previous: list[tuple[int, int]] = []  # (id, size) of every chunk read
    held_while_reading: list[int] = []

    def watched(info: Any, start: int = 0, *, unstable: Any = None) -> Iterator[bytes]:
        for raw in open_source(info, start, unstable=unstable):
            if previous and previous[-1][0] in _Chunk.alive and previous[-1][1] >= RELEASE_AFTER:
                held_while_reading.append(previous[-1][1])  # (the server may keep a smaller one)
            chunk = _Chunk(raw)
            del raw
            previous.append((id(chunk), len(chunk)))
            _Chunk.alive.add(id(chunk))
            yield chunk
            del chunk

    zipped._open_source = watched  # type: ignore[method-assign]
    out = bytearray()
    for item in prepared.stream():  # as gunicorn does: `item` is kept until the next is asked for
        out += item
    assert len(previous) > 6  # several chunks per member
    assert held_while_reading == []
    archive = zipfile.ZipFile(io.BytesIO(bytes(out)))
    assert [archive.read(path.strip("/")) for path in contents] == list(contents.values())


class _StallingClient:
    """A client (memory.ClientWindow's face to the stream) that stalls, and so parks, once `parked_after`
    bytes went out; then `then`: "gone" (it hangs up while parked: its socket turns writable, as a closed
    one does) or "reads" (it reads on)."""

    room = CHUNK_SIZE

    def __init__(self, parked_after: int, then: str) -> None:
        self.parked_after = parked_after
        self.then = then
        self.position = 0
        self.parks = 0

    def wait_writable(self, park: Callable[[float], bool] | None = None) -> bool:
        if park is not None and not self.parks and self.position >= self.parked_after and park(60.0):
            self.parks += 1
            return False
        return True

    def sending(self) -> None:
        pass

    def sent(self) -> None:
        pass

    def handed(self, count: int) -> None:
        self.position += count

    def read_size(self) -> int:
        return 64 * 1024

    def gone(self) -> bool:
        return self.parks > 0 and self.then == "gone"


@pytest.mark.parametrize("then", ["gone", "reads"])
def test_a_client_that_hangs_up_while_parked_costs_no_upstream_request(
    tmp_path: Path, upstream: UpstreamServer, then: str,
) -> None:
    """A parked download waits for its client's socket to turn writable, which a closed or reset one does
    too: before, it then built its pipeline again (memory, read-ahead, a ranged request per member it was
    in or read ahead) only for the first write to fail, for every client that left while parked."""
    prepared, _ = _prepared(tmp_path, upstream, f"gone-{then}-", 3, 300_000, prefetch=2)
    whole = b"".join(prepared.stream())
    client = _StallingClient(parked_after=400_000, then=then)
    prepared.body.client = client  # type: ignore[assignment]
    upstream.clear_log()
    received = bytearray()
    try:
        for chunk in prepared.stream():
            received.extend(chunk)
    except StreamAborted:
        assert then == "gone"
    assert client.parks == 1
    if then == "reads":
        assert bytes(received) == whole
        assert any(r.range and r.range != "bytes=0-" for r in upstream.requests)  # it went on, ranged
    else:
        # Nothing asked of upstream after the park: the requests made are the first pipeline's only.
        ranged = [r for r in upstream.requests if re.fullmatch(r"bytes=[1-9][0-9]*-", r.range or "")]
        assert ranged == [] and len(received) < len(whole)
    assert memory.worker_budget().used == 0


def test_no_piece_is_bigger_than_the_socket_takes_at_once_even_for_a_client_that_kept_pace(
    tmp_path: Path, upstream: UpstreamServer,
) -> None:
    """A chunk no bigger than twice the client's pace went out whole, however little room its socket
    had: the server's write of it then waited for the client, where the download can't park. Seen under
    gunicorn: 60 clients that stalled together (MEMORY_BUDGET 4 MiB), 59 parked, one stayed in sendall
    with its chunk, read-ahead workers and upstream bodies until SEND_TIMEOUT."""
    prepared, _ = _prepared(tmp_path, upstream, "room-", 2, 300_000, prefetch=0)
    whole = b"".join(prepared.stream())
    client = _StallingClient(parked_after=1 << 40, then="reads")  # paces at 64 KiB, never parks
    client.room = 20_000  # what the socket takes now without a wait
    prepared.body.client = client  # type: ignore[assignment]
    pieces = list(prepared.stream())
    assert b"".join(pieces) == whole
    assert max(len(piece) for piece in pieces) <= client.room
