"""zipstream.memory: the worker's budget (FIFO, the share for later, cancelling), a download's Account
(everything back on close, nothing after), and the client's window (read sizes, a client gone)."""

from __future__ import annotations

import io
import os
import socket
import threading
import zipfile
from collections.abc import Callable, Iterator

import pytest
import requests

from zipstream import counters, memory
from zipstream.chunks import CHUNK_SIZE
from zipstream.memory import MIN_READ, Account, ClientWindow, MemoryBudget

from .support.live import LiveServer
from .support.stalled import drain, stall
from .support.upstream import UpstreamServer
from .support.waiting import wait_for


def _acquiring(budget: MemoryBudget, count: int, order: list[int], cancelled: threading.Event | None = None,
               results: dict[int, bool] | None = None) -> threading.Thread:
    """A thread that asks for `count` bytes and records, once granted, `count` in `order`."""

    def run() -> None:
        got = budget.acquire(count, cancelled.is_set if cancelled is not None else None)
        if results is not None:
            results[count] = got
        if got:
            order.append(count)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_acquires_are_granted_first_come_first_served() -> None:
    budget = MemoryBudget(10)
    assert budget.acquire(8)
    order: list[int] = []
    first = _acquiring(budget, 5, order)
    wait_for(lambda: budget.waiting == 1, "the first waiter queued")
    second = _acquiring(budget, 2, order)  # would fit now, but must not pass the one before it
    wait_for(lambda: budget.waiting == 2, "the second waiter queued")
    assert order == [] and budget.used == 8
    budget.release(3)  # room for the first one only
    first.join(5)
    assert order == [5] and budget.waiting == 1 and budget.used == 10
    budget.release(5)
    second.join(5)
    assert order == [5, 2]
    assert budget.used == 7 and budget.waiting == 0


def test_bytes_for_later_never_wait_never_pass_a_waiter_and_keep_to_their_share() -> None:
    budget = MemoryBudget(100)  # its share for later: half
    assert budget.try_acquire(50)
    assert not budget.try_acquire(1)  # the share is spent, though the budget is not
    assert budget.acquire(50)  # the chunk going out still has the other half
    budget.release(50, ahead=True)
    order: list[int] = []
    waiter = _acquiring(budget, 60, order)
    wait_for(lambda: budget.waiting == 1, "a waiter queued")
    assert not budget.try_acquire(10)  # room for it, but someone waits
    budget.release(50)
    waiter.join(5)
    assert order == [60] and budget.used == 60 and budget.ahead == 0


def test_a_cancelled_wait_gives_up_and_lets_the_next_one_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "WAIT_POLL", 0.01)
    budget = MemoryBudget(10)
    assert budget.acquire(6)
    order: list[int] = []
    results: dict[int, bool] = {}
    gone = threading.Event()
    big = _acquiring(budget, 9, order, gone, results)  # the client of this one leaves
    wait_for(lambda: budget.waiting == 1, "the big one queued")
    small = _acquiring(budget, 3, order, None, results)  # fits, but waits behind the big one
    wait_for(lambda: budget.waiting == 2, "the small one queued")
    gone.set()
    big.join(5)
    small.join(5)
    assert results == {9: False, 3: True} and order == [3]
    assert budget.used == 9 and budget.waiting == 0


def test_a_request_larger_than_the_budget_is_granted_once_nothing_else_is() -> None:
    budget = MemoryBudget(10)
    assert budget.acquire(4)
    order: list[int] = []
    huge = _acquiring(budget, 25, order)
    wait_for(lambda: budget.waiting == 1, "the huge one queued")
    budget.release(4)
    huge.join(5)
    assert order == [25] and budget.used == 25


def test_the_budget_is_pressed_while_a_download_waits_or_for_a_while_after_one_was_refused_a_bigger_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What tells a download waiting for its client to park (stream.ZipStream) sooner than PARK_AFTER."""
    monkeypatch.setattr(memory, "PRESSED_FOR", 0.2)
    budget = MemoryBudget(100)
    assert not budget.pressed()
    assert budget.try_acquire(90, ahead=False)
    assert not budget.try_acquire(20, ahead=True) and not budget.pressed()  # read-ahead refused: no need
    assert not budget.try_acquire(20, ahead=False) and budget.pressed()  # a bigger read refused
    wait_for(lambda: not budget.pressed(), "the refusal forgotten", timeout=5)
    order: list[int] = []
    waiter = _acquiring(budget, 50, order)
    wait_for(lambda: budget.waiting == 1, "a download waiting")
    assert budget.pressed()
    budget.release(90)
    waiter.join(5)
    assert order == [50] and not budget.pressed()


def test_the_gauges_follow_the_budget() -> None:
    budget = MemoryBudget(1000)
    budget.acquire(300)
    assert counters.MEMORY_GRANTED._value.get() == 300  # type: ignore[attr-defined]
    assert counters.MEMORY_PEAK._value.get() >= 300  # type: ignore[attr-defined]
    budget.release(300)
    assert counters.MEMORY_GRANTED._value.get() == 0  # type: ignore[attr-defined]


def test_an_account_gives_everything_back_on_close_and_takes_nothing_after() -> None:
    budget = MemoryBudget(1000)
    account = Account(budget)
    assert account.acquire(100)
    assert account.try_acquire(200)
    account.resize(200, 150, ahead=True)  # a read returned less than granted
    account.resize(100, 180)  # or more: it is in memory, so it is counted
    assert (account.out, account.ahead, budget.used, budget.ahead) == (180, 150, 330, 150)
    account.release(1000)  # never more than it holds
    assert (account.out, budget.used) == (0, 150)
    account.close()
    assert budget.used == 0 and budget.ahead == 0
    assert not account.acquire(10) and not account.try_acquire(10)
    account.release(10, ahead=True)  # a late give-back is a no-op
    assert budget.used == 0


def test_a_grant_that_arrives_after_the_account_closed_goes_straight_back() -> None:
    budget = MemoryBudget(10)
    holder = Account(budget)
    assert holder.acquire(10)
    account = Account(budget)
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(account.acquire(5)), daemon=True)
    waiter.start()
    wait_for(lambda: budget.waiting == 1, "the download waits for memory")
    account.close()  # the download ends while it waits
    holder.close()
    waiter.join(5)
    assert results == [False]
    assert budget.used == 0


def test_the_worker_budget_reads_memory_budget_once_and_configure_resizes_it() -> None:
    budget = memory.worker_budget()
    total = budget.total
    try:
        assert memory.configure(8 * CHUNK_SIZE) is budget
        assert budget.total == 8 * CHUNK_SIZE and budget.ahead_limit == 4 * CHUNK_SIZE
    finally:
        memory.configure(total)


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    yield server, client
    server.close()
    client.close()


def test_reads_start_small_and_grow_with_what_the_client_drains(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    server, client = connection
    window = ClientWindow(server)
    assert window.read_size() == MIN_READ
    sizes = []
    for _ in range(10):  # a client that reads everything at once: sizes double up to CHUNK_SIZE
        size = window.read_size()
        sizes.append(size)
        # Sent from a thread while this one reads: a blocking send of a MiB into a client that reads only
        # afterwards waited for the client's receive buffer to grow, and hung when it did not.
        sender = threading.Thread(target=server.sendall, args=(b"x" * size,))
        sender.start()
        window.handed(size)
        received = 0
        while received < size:
            received += len(client.recv(size - received))
        sender.join(10)
        wait_for(lambda: _queued(server) == 0, "the bytes acknowledged")
    assert sizes[0] == MIN_READ and sizes[-1] == CHUNK_SIZE
    assert sizes == sorted(sizes)


def test_a_client_that_reads_nothing_gets_the_smallest_reads(connection: tuple[socket.socket, socket.socket]) -> None:
    server, client = connection
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    window = ClientWindow(server)
    server.setblocking(False)
    sent = 0
    for _ in range(50):  # fill what the kernel takes
        try:
            sent += server.send(b"x" * 65536)
        except BlockingIOError:
            break
    window.handed(sent)
    window.read_size()
    assert window.read_size() == MIN_READ  # nothing drained since


def test_the_room_is_what_the_socket_takes_without_a_wait(connection: tuple[socket.socket, socket.socket]) -> None:
    """A chunk larger than `room` goes out in pieces (stream.ZipStream): a write that waits inside the
    server holds its chunk where the download can't park."""
    server, client = connection
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    window = ClientWindow(server)
    window.read_size()
    assert window.room > 0
    server.setblocking(False)
    for _ in range(8):  # a client that reads nothing: each write of `room` is taken whole, then none is left
        window.read_size()
        if window.room < MIN_READ:
            break
        assert server.send(b"x" * window.room) == window.room
    else:
        pytest.fail("the room never ran out")
    with pytest.raises(BlockingIOError):  # and it is really full
        server.send(b"x" * 65536)


def test_the_room_is_no_more_than_a_small_send_buffer_has_free(connection: tuple[socket.socket, socket.socket]) -> None:
    """Linux shrinks send buffers when the machine's TCP memory runs short (tcp_mem): a piece sized to
    NOTSENT_LOWAT alone then waits inside the server's write, where its download can't park."""
    server, client = connection
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # as the kernel does under pressure
    window = ClientWindow(server)
    window.read_size()
    assert 0 < window.room < 64 * 1024
    server.setblocking(False)
    assert server.send(b"x" * window.room) == window.room  # taken whole, without a wait


def test_a_client_that_hung_up_is_gone(connection: tuple[socket.socket, socket.socket]) -> None:
    server, client = connection
    window = ClientWindow(server)
    assert not window.gone()
    client.close()
    wait_for(window.gone, "the hang-up seen")


def _queued(sock: socket.socket) -> int:
    import fcntl
    import struct
    import termios

    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])


# -- through gunicorn: slow clients wait within the budget, a fast one is served meanwhile -------------

def _gauges(server: LiveServer) -> dict[str, float]:
    """The memory gauges of the (one) worker, from /metrics."""
    values: dict[str, float] = {}
    for line in requests.get(server.url("/metrics"), timeout=10).text.splitlines():
        if line.startswith("zipstream_memory_"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            values[name] = float(line.rsplit(" ", 1)[1])
    return values


def test_under_gunicorn_stalled_clients_keep_the_worker_within_its_budget_and_a_fast_one_is_served(
    serve: Callable[..., LiveServer], upstream: UpstreamServer,
) -> None:
    files = {f"/big{i}.bin": os.urandom(2 * CHUNK_SIZE) for i in range(3)}
    for path, data in files.items():
        upstream.add(path, data)
    budget = 4 * CHUNK_SIZE
    server = serve(MEMORY_BUDGET=str(budget), ACCESS_LOG="/dev/null")
    created = requests.post(server.url("/"), json={"files": [{"src": upstream.url(path)} for path in files]},
                            timeout=30)
    path = f"/{created.json()['id']}"
    whole = requests.get(server.url(path), timeout=60).content
    assert zipfile.ZipFile(io.BytesIO(whole)).read("big1.bin") == files["/big1.bin"]
    stalled = [stall(server.port, path) for _ in range(24)]
    # Meanwhile a fast client gets the whole zip, though the stalled ones read nothing on.
    assert requests.get(server.url(path), timeout=60).content == whole
    gauges = _gauges(server)
    assert gauges["zipstream_memory_budget_bytes"] == budget
    assert 0 < gauges["zipstream_memory_granted_peak_bytes"] <= budget
    for sock, body in stalled:
        assert drain(sock, body) == whole
    wait_for(lambda: _gauges(server)["zipstream_memory_granted_bytes"] == 0, "every grant given back")


def test_under_gunicorn_clients_that_take_nothing_past_send_timeout_are_cut_and_give_their_memory_back(
    serve: Callable[..., LiveServer], upstream: UpstreamServer,
) -> None:
    """Before SEND_TIMEOUT a client that stopped reading kept its download and its grant for as long as it
    stayed connected: enough of them and every other download waited for memory (issue 16's attack pass:
    MEMORY_BUDGET 4 MiB, 400 such connections, a fast client got nothing in 20 s)."""
    files = {f"/big{i}.bin": os.urandom(2 * CHUNK_SIZE) for i in range(3)}
    for path, data in files.items():
        upstream.add(path, data)
    server = serve(MEMORY_BUDGET=str(4 * CHUNK_SIZE), SEND_TIMEOUT="1", ACCESS_LOG="/dev/null")
    created = requests.post(server.url("/"), json={"files": [{"src": upstream.url(path)} for path in files]},
                            timeout=30)
    path = f"/{created.json()['id']}"
    whole = requests.get(server.url(path), timeout=60).content
    stalled = [stall(server.port, path) for _ in range(24)]
    # They keep reading nothing: within about SEND_TIMEOUT each download is cut and its memory is back.
    wait_for(lambda: _gauges(server)["zipstream_memory_granted_bytes"] == 0, "every stalled download's grant back",
             timeout=15)
    assert requests.get(server.url(path), timeout=30).content == whole
    for sock, body in stalled:
        assert len(drain(sock, body)) < len(whole)  # cut: never a zip that looks complete
    assert "Traceback" not in server.log_text()
