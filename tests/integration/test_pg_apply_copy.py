"""The applier on PostgreSQL: runs of new rows go straight into their table with COPY, and rows that are already
there (a window applied again after a crash, a snapshot's overlap) make that COPY give way to the upsert."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from replication.apply import BULK_MIN_ROWS, Applier, apply_engine
from replication.changes import Change, ChangeOp
from replication.pg_wal2json import RowInsert
from standby.store.schema import provinces, replication_state
from tests.integration.replica import make_standby

pytestmark = pytest.mark.postgres
ROWS = 90  # more than BULK_MIN_ROWS, so each run is copied; under 100, as codes have 2 characters


def inserts(first_position: int, name: str, op: ChangeOp = ChangeOp.INSERT) -> list[Change]:
    return [Change(first_position + i, "provinces", op, {"code": f"{i:02d}", "valid_from": "2025-07-01"},
                   {"code": f"{i:02d}", "valid_from": "2025-07-01", "valid_to": None, "name": f"{name} {i}",
                    "short_name": name}, seq=0)
            for i in range(ROWS)]


@pytest.fixture
def applier(pg_url):
    make_standby(pg_url)
    engine = apply_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(provinces.delete())
    yield Applier(engine)
    engine.dispose()


def names(applier: Applier) -> dict[str, str]:
    with applier.engine.connect() as conn:
        return dict(conn.execute(select(provinces.c.code, provinces.c.name)).all())


def test_a_run_of_new_rows_lands_whole_with_its_position(applier):
    assert ROWS >= BULK_MIN_ROWS
    result = applier.apply("s", 0, inserts(1000, "new"), upto=2000)
    assert (result.applied, result.position) == (ROWS, 2000)
    assert names(applier) == {f"{i:02d}": f"new {i}" for i in range(ROWS)}
    assert applier.positions("s") == {0: 2000}


def test_rows_already_there_give_way_to_the_upsert_and_the_newer_image_wins(applier):
    applier.apply("first", 0, inserts(1000, "old"), upto=2000)
    # Another stream (its positions start afresh) brings the same keys as inserts: the straight COPY meets the rows
    # already there and the window goes the upsert's way, in the same transaction, nothing refused.
    result = applier.apply("second", 0, inserts(5000, "newer"), upto=6000)
    assert result.applied == ROWS
    assert names(applier) == {f"{i:02d}": f"newer {i}" for i in range(ROWS)}
    with applier.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(provinces)).scalar_one() == ROWS
        stored = dict(conn.execute(select(replication_state.c.stream, replication_state.c.position)).all())
    assert stored == {"first": 2000, "second": 6000}


def test_a_window_sent_again_after_its_position_changes_nothing(applier):
    window = inserts(1000, "once")
    applier.apply("s", 0, window, upto=2000)
    again = applier.apply("s", 0, window, upto=2000)
    assert again.applied == 0
    assert names(applier) == {f"{i:02d}": f"once {i}" for i in range(ROWS)}


def left_inserts(first_position: int, name: str) -> list[RowInsert]:
    """The rows of `inserts` as the PostgreSQL reader leaves them for the apply workers (replication.pg_wal2json)."""
    columns = [c.name for c in provinces.columns]
    return [RowInsert(c.position, "provinces", [c.row[n] for n in columns], None, None, 0)
            for c in inserts(first_position, name)]


def test_rows_left_for_the_workers_land_as_the_changes_they_build_by_copy_and_by_upsert(applier):
    result = applier.apply("s", 0, left_inserts(1000, "new"), upto=2000)
    assert result.applied == ROWS
    assert names(applier) == {f"{i:02d}": f"new {i}" for i in range(ROWS)}
    # The same keys again from another stream: the COPY meets them and the window goes the upsert's way.
    applier.apply("other", 0, left_inserts(5000, "newer"), upto=6000)
    assert names(applier) == {f"{i:02d}": f"newer {i}" for i in range(ROWS)}
    # A short run (below BULK_MIN_ROWS) is built and upserted row by row.
    applier.apply("short", 0, left_inserts(9000, "short")[:3], upto=9100)
    assert names(applier) == {f"{i:02d}": f"short {i}" if i < 3 else f"newer {i}" for i in range(ROWS)}
