"""SQLite's write lock as a writer engine takes it (standby.store.engine): waited for by polling, not by SQLite's
sleeping busy handler; held past the wait, the usual "database is locked"; no write lost when writers contend."""
from __future__ import annotations

import multiprocessing
import sqlite3
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from standby.store.engine import make_engine

INCREMENTS = 150
WRITERS = 3


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'lock.db'}"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
        conn.execute(text("CREATE TABLE written (writer INTEGER NOT NULL, seen INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO counter VALUES (1, 0)"))
    engine.dispose()
    return url


def _holder(url: str) -> sqlite3.Connection:
    """Another connection holding the write lock (BEGIN IMMEDIATE) until it commits or rolls back."""
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_a_writer_waits_for_the_lock_and_begins_after_the_holder_committed(db):
    holder = _holder(db)
    holder.execute("UPDATE counter SET n = 41 WHERE id = 1")
    engine = make_engine(db)
    seen: list[int] = []
    failures: list[BaseException] = []

    def write() -> None:
        try:
            with engine.begin() as conn:
                seen.append(conn.execute(text("SELECT n FROM counter WHERE id = 1")).scalar())
                conn.execute(text("UPDATE counter SET n = n + 1 WHERE id = 1"))
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(0.3)
    assert writer.is_alive() and not seen, "the writer must wait while the lock is held"
    holder.execute("COMMIT")
    holder.close()
    writer.join(30)
    assert not failures and seen == [41]  # it began after the holder's commit, and saw it
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar() == 42
    engine.dispose()


def test_a_lock_held_past_the_wait_is_database_is_locked_and_the_engine_recovers(db):
    holder = _holder(db)
    engine = make_engine(db, lock_wait_s=0.2)
    with pytest.raises(OperationalError, match="database is locked"):
        with engine.begin() as conn:
            conn.execute(text("UPDATE counter SET n = n + 1 WHERE id = 1"))
    holder.execute("ROLLBACK")
    holder.close()
    with engine.begin() as conn:  # the same pooled connection, usable again: no transaction was left open
        conn.execute(text("UPDATE counter SET n = n + 1 WHERE id = 1"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar() == 1
    engine.dispose()


def test_a_reader_is_not_made_to_wait_by_a_writer(db):
    holder = _holder(db)
    holder.execute("UPDATE counter SET n = 7 WHERE id = 1")
    reader = make_engine(db, writer=False, lock_wait_s=0.2)
    with reader.connect() as conn:  # WAL: the last commit, not the holder's uncommitted write
        assert conn.execute(text("SELECT n FROM counter")).scalar() == 0
    holder.execute("ROLLBACK")
    holder.close()
    reader.dispose()


def _increment(url: str, writer: int, start: multiprocessing.Event) -> None:
    engine = make_engine(url, pool_size=1)
    start.wait()
    for _ in range(INCREMENTS):
        with engine.begin() as conn:
            n = conn.execute(text("SELECT n FROM counter WHERE id = 1")).scalar()
            conn.execute(text("UPDATE counter SET n = :n WHERE id = 1"), {"n": n + 1})
            conn.execute(text("INSERT INTO written VALUES (:w, :n)"), {"w": writer, "n": n})
    engine.dispose()


def test_writer_processes_contending_for_the_lock_lose_no_write_and_never_interleave(db):
    # read-then-write in each transaction: two writers inside the lock at once would read the same n
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    writers = [context.Process(target=_increment, args=(db, w, start)) for w in range(WRITERS)]
    for process in writers:
        process.start()
    start.set()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    engine = make_engine(db, writer=False)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar() == WRITERS * INCREMENTS
        seen = conn.execute(text("SELECT seen FROM written ORDER BY seen")).scalars().all()
        per_writer = dict(conn.execute(text("SELECT writer, count(*) FROM written GROUP BY writer")).all())
    assert seen == list(range(WRITERS * INCREMENTS))  # every value read exactly once
    assert per_writer == {w: INCREMENTS for w in range(WRITERS)}
    engine.dispose()
