"""PgChangeSource's read over the streaming replication protocol, on a real PostgreSQL with wal2json: windows of any
size hold whole transactions in commit order; a walsender cut mid-stream is a transient error after which the next
read resumes from the slot, with nothing lost or doubled; a new source resumes where the slot was confirmed."""
from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from replication.changes import Change
from replication.errors import SourceUnavailable
from replication.pg_source import PgChangeSource
from standby.store.engine import make_engine
from tests.integration.postgres_support import (  # noqa: F401  (fixtures included)
    assert_all,
    engine,
    office_codes,
    org,
    pipeline,
    pre_declarations,
    site,
)
from tests.integration.test_pg_source import assert_whole_transactions_in_order, transactions

pytestmark = pytest.mark.postgres


@pytest.fixture
def sources(site: Engine, pg_url: str) -> Iterator[list[PgChangeSource]]:
    """Two sources on two slots created at the same moment: one is read and cut, the other is the reference."""
    made = [PgChangeSource(pg_url, f"t_{uuid.uuid4().hex[:12]}") for _ in range(2)]
    yield made
    for src in made:
        src.drop_slot(missing_ok=True)
        src.close()


def write_transactions(site: Engine, pg_url: str, rounds: int) -> None:
    """Two threads of intake (batches of different sizes, so transactions interleave and commit out of start
    order), then a synchronous heartbeat so every commit is flushed and decodable."""
    offices = office_codes(site)
    engines = [make_engine(pg_url) for _ in range(2)]

    def work(i: int) -> None:
        p, rng = pipeline(engines[i]), random.Random(40 + i)
        for r in range(rounds):
            assert_all(p.process(pre_declarations(site, rng.randint(1, 6), rng, f"s{i}r{r}",
                                                  offices=offices[i::2])), 201)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in engines:
        e.dispose()


def read_in_windows(src: PgChangeSource, limit: int, acknowledge: bool = False, cut=None) -> tuple[list[Change], int]:
    """Everything after 0, window by window as the replicator reads it; `cut(i)` runs before window i. Returns the
    changes and how many reads failed as transient."""
    changes: list[Change] = []
    after, failures, i = 0, 0, 0
    while True:
        if cut:
            cut(i)
        i += 1
        try:
            window = src.read(after, limit)
            if window and acknowledge:
                src.acknowledge(window[-1].position)
        except SourceUnavailable:
            failures += 1
            assert failures < 20, "the stream never came back"
            continue
        if not window:
            return changes, failures
        assert window[0].position > after and window[0].seq == 0, "a window began inside a transaction"
        changes += window
        after = window[-1].position


def terminate_walsender(site: Engine, slot: str) -> int:
    with site.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        return len(conn.execute(text("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                                     "WHERE slot_name = :s AND active_pid IS NOT NULL"), {"s": slot}).all())


def prepared(sources: list[PgChangeSource], site: Engine, pg_url: str, rounds: int) -> list[PgChangeSource]:
    for s in sources:
        s.create_slot()
    write_transactions(site, pg_url, rounds)
    sources[0].heartbeat("A")
    return sources


def test_windows_of_any_size_hold_whole_transactions_in_commit_order(site: Engine, sources, pg_url: str) -> None:
    src, reference = prepared(sources, site, pg_url, rounds=8)

    everything, _ = read_in_windows(reference, 100_000)
    assert_whole_transactions_in_order(everything)
    assert len(transactions(everything)) >= 17  # 2 x 8 batches and the heartbeat
    for limit in (1, 7, 60):
        windows, failures = read_in_windows(src, limit)
        assert failures == 0 and windows == everything, limit


def test_a_cut_walsender_loses_and_doubles_nothing(site: Engine, sources, pg_url: str) -> None:
    src, reference = prepared(sources, site, pg_url, rounds=10)
    cuts = []

    def cut(i: int) -> None:  # end the walsender before every third window, mid-stream
        if i % 3 == 2:
            cuts.append(terminate_walsender(site, src.slot))

    got, _failures = read_in_windows(src, 8, acknowledge=True, cut=cut)

    everything, _ = read_in_windows(reference, 100_000)
    assert sum(cuts) >= 2, cuts  # the cuts hit a live walsender (a read restarts a cut stream once by itself)
    assert got == everything  # in order, each change once
    assert_whole_transactions_in_order(got)
    # A new source (a restarted replicator) resumes at the confirmed position: nothing more to read.
    src.close()  # its walsender lets go of the slot
    again = PgChangeSource(pg_url, src.slot)
    try:
        assert again.read(got[-1].position, 100) == []
    finally:
        again.close()
