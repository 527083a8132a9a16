"""A throwaway PostgreSQL database per test: created with a unique name, dropped afterwards."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg2


@contextmanager
def throwaway_database(server_url: str, prefix: str) -> Iterator[str]:
    """Create `<prefix>_<pid>_<random>` on the server of `server_url`; yield its URL; drop it (only it)."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(server_url)
        try:
            yield urlunsplit(parts._replace(path=f"/{name}"))
        finally:
            with admin.cursor() as cursor:
                # Connections a killed server left behind would block the drop.
                cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        admin.close()


def holding_lock(url: str, statement: str, params: tuple[object, ...],
                 release: Callable[[], object]) -> threading.Thread:
    """A started thread that runs `statement` (one that takes a lock) in a session of its own and keeps
    its transaction open until `release()` returns; returned once the lock is taken."""
    taken = threading.Event()

    def hold() -> None:
        session = psycopg2.connect(url)
        try:
            with session.cursor() as cursor:
                cursor.execute(statement, params)
                taken.set()
                release()
            session.rollback()
        finally:
            session.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(10)
    return thread
