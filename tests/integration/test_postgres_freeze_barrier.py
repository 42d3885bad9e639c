"""The freeze is a barrier on PostgreSQL: it waits for in-flight intake batches (the drain), and no batch commits
after it. Real pipelines on their own engines and threads against a real server; the site-control operations
(freeze, resume, fence, promote) on PostgreSQL and SQLite alike."""
from __future__ import annotations

import random
import threading
import time

import pytest
from sqlalchemy import Engine, event, func, select

from standby.clearance.pipeline import is_hold
from standby.domain.errors import DomainError, IllegalTransition
from standby.domain.states import IntakeState, SiteRole
from standby.store.engine import make_engine
from standby.store.migrate import upgrade
from standby.store.schema import declarations
from standby.store.site import (
    EpochMismatch,
    fence,
    freeze,
    init_site,
    promote,
    read_control,
    resume,
)
from tests.integration.postgres_support import (  # noqa: F401  (fixtures included)
    SITE,
    assert_all,
    count,
    engine,
    office_codes,
    pipeline,
    pre_declarations,
    run_workers,
    site,
)


class CountAtFreeze:
    """Counts the declarations from inside the freeze's own transaction, right after its UPDATE of the control row
    (its last statement before COMMIT). Every batch committed by then is counted; with the barrier none can commit
    between that count and the freeze's commit, nor after it."""

    def __init__(self, engine: Engine):
        self.engine, self.rows = engine, None

    def __enter__(self) -> "CountAtFreeze":
        event.listen(self.engine, "after_cursor_execute", self._hook)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(self.engine, "after_cursor_execute", self._hook)

    def _hook(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("UPDATE SITE_CONTROL"):
            raw = conn.connection.cursor()  # the same connection, so the same transaction (PostgreSQL or SQLite)
            try:
                raw.execute("SELECT count(*) FROM declarations")
                self.rows = raw.fetchone()[0]
            finally:
                raw.close()


def _lock_waiters(observer: Engine, query_prefix: str) -> int:
    with observer.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database() "
            "AND query LIKE %(prefix)s", {"prefix": query_prefix + "%"}).scalar()


@pytest.mark.postgres
def test_no_batch_commits_after_the_freeze_under_concurrent_intake(site: Engine, pg_url: str) -> None:
    """Four workers (own engines and pipelines) run batches of 20 pre-declarations back to back while `freeze`
    runs. The rows counted inside the freeze's transaction, just before it commits, are all there will ever be:
    every batch afterwards is answered with the gate's hold and writes nothing."""
    names = ("a", "b", "c", "d")
    offices = office_codes(site)
    work = {w: pre_declarations(site, 2000, random.Random(200 + i), f"fz-{w}", offices=offices[i::4])
            for i, w in enumerate(names)}
    engines = {w: make_engine(pg_url) for w in names}
    committed = {w: 0 for w in names}
    held_after = {w: 0 for w in names}
    frozen_seen = threading.Event()
    started = threading.Barrier(len(names) + 1)

    def run(w: str) -> None:
        worker, batch = pipeline(engines[w]), 20
        started.wait()
        for i in range(0, len(work[w]), batch):
            outcomes = worker.process(work[w][i:i + batch])
            if all(is_hold(o) for o in outcomes):
                if frozen_seen.is_set():
                    held_after[w] += 1
                    if held_after[w] >= 3:
                        return
                continue
            assert_all(outcomes, 201)
            committed[w] += len(outcomes)
        raise AssertionError(f"worker {w} ran out of work before the freeze was felt")

    failures: list[BaseException] = []

    def workers() -> None:
        try:
            run_workers(run, names, engines)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test below
            failures.append(exc)

    thread = threading.Thread(target=workers)
    thread.start()
    started.wait()
    while sum(committed.values()) < 200:  # intake is flowing on every thread
        time.sleep(0.005)
    with CountAtFreeze(site) as at_freeze:
        frozen = freeze(site, SITE, epoch=1, hold_s=5, hold_max=100)
    frozen_seen.set()
    thread.join(timeout=180)
    assert not thread.is_alive() and not failures, failures

    assert frozen.intake_state is IntakeState.FROZEN
    assert all(n >= 3 for n in held_after.values())  # every worker met the freeze, three batches each
    assert at_freeze.rows is not None and at_freeze.rows >= 200
    assert count(site, declarations) == at_freeze.rows == sum(committed.values())


@pytest.mark.postgres
def test_freeze_waits_for_an_in_flight_batch_which_commits_before_it(site: Engine, pg_url: str) -> None:
    """A batch has taken the control row (FOR SHARE) and is about to insert when `freeze` starts: the freeze
    waits on its lock (reads of the row still answer meanwhile), the batch commits, then the freeze commits, and
    the next batch is held."""
    batch_engine, observer = make_engine(pg_url), make_engine(pg_url)
    commands = pre_declarations(site, 30, random.Random(7), "drain")
    froze: list = []
    seen: dict = {}

    def hook(conn, cursor, statement, parameters, context, executemany) -> None:
        if seen or not statement.lstrip().upper().startswith("INSERT INTO DECLARATIONS"):
            return
        freezer = threading.Thread(target=lambda: froze.append(freeze(site, SITE, epoch=1, hold_s=5, hold_max=10)))
        freezer.start()
        deadline = time.monotonic() + 30
        while not _lock_waiters(observer, "LOCK TABLE site_control") and time.monotonic() < deadline:
            time.sleep(0.005)
        seen["freeze_waited"] = bool(_lock_waiters(observer, "LOCK TABLE site_control"))
        seen["freeze_returned_early"] = bool(froze)
        seen["read_meanwhile"] = read_control(observer, SITE).intake_state
        seen["freezer"] = freezer

    event.listen(batch_engine, "before_cursor_execute", hook)
    with CountAtFreeze(site) as at_freeze:
        outcomes = pipeline(batch_engine).process(commands[:20])
        seen["freezer"].join(timeout=60)
    event.remove(batch_engine, "before_cursor_execute", hook)

    assert seen["freeze_waited"] and not seen["freeze_returned_early"]
    assert seen["read_meanwhile"] is IntakeState.OPEN  # the drain does not block reads of the row
    assert_all(outcomes, 201)
    assert count(site, declarations) == 20  # the in-flight batch committed
    assert at_freeze.rows == 20  # ... before the freeze did: its rows were visible inside the freeze's transaction
    (frozen,) = froze
    assert frozen.intake_state is IntakeState.FROZEN and frozen.drained_s > 0
    after = pipeline(batch_engine).process(commands[20:])
    assert all(is_hold(o) for o in after) and count(site, declarations) == 20
    batch_engine.dispose()
    observer.dispose()


# --- the site-control operations, on both engines ---------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def control(request, tmp_path) -> Engine:
    """A migrated database with site A as primary at epoch 1 (no reference data: only the control row is used)."""
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'control.db'}"
    upgrade(url)
    eng = make_engine(url)
    init_site(eng, SITE, SiteRole.PRIMARY)
    yield eng
    eng.dispose()


def test_freeze_records_its_bounds_and_is_idempotent_under_the_same_epoch(control: Engine) -> None:
    frozen = freeze(control, SITE, epoch=1, hold_s=2.5, hold_max=40, now=1000.0)
    assert (frozen.intake_state, frozen.hold_s, frozen.hold_max, frozen.frozen_at) == (IntakeState.FROZEN, 2.5, 40,
                                                                                       1000.0)
    again = freeze(control, SITE, epoch=1, hold_s=9, hold_max=9, now=2000.0)
    assert (again.hold_s, again.hold_max, again.frozen_at, again.drained_s) == (2.5, 40, 1000.0, 0.0)


def test_freeze_and_resume_refuse_another_epoch_and_write_nothing(control: Engine) -> None:
    with pytest.raises(EpochMismatch) as err:
        freeze(control, SITE, epoch=2, hold_s=1, hold_max=1)
    assert err.value.refusal.code == "epoch_mismatch"
    assert read_control(control, SITE).intake_state is IntakeState.OPEN
    freeze(control, SITE, epoch=1, hold_s=1, hold_max=1)
    with pytest.raises(EpochMismatch):
        resume(control, SITE, epoch=0)
    assert read_control(control, SITE).intake_state is IntakeState.FROZEN


def test_resume_opens_clears_the_freeze_and_is_idempotent(control: Engine) -> None:
    freeze(control, SITE, epoch=1, hold_s=1, hold_max=5)
    opened = resume(control, SITE, epoch=1)
    assert (opened.intake_state, opened.frozen_at, opened.hold_s, opened.hold_max) == (IntakeState.OPEN, None, None,
                                                                                       None)
    assert resume(control, SITE, epoch=1) == opened


def test_fence_makes_the_old_primary_a_fenced_standby_naming_the_new_primary(control: Engine) -> None:
    freeze(control, SITE, epoch=1, hold_s=1, hold_max=5)
    fenced = fence(control, SITE, epoch=2, primary_site="B")
    assert (fenced.role, fenced.intake_state, fenced.primary_site, fenced.epoch, fenced.fenced_epoch) == \
        (SiteRole.STANDBY, IntakeState.FENCED, "B", 1, 2)
    assert fence(control, SITE, epoch=2, primary_site="B") == fenced  # idempotent
    with pytest.raises(EpochMismatch):
        fence(control, SITE, epoch=1, primary_site="B")
    with pytest.raises(EpochMismatch):  # a fenced site is never resumed: it needs a promotion
        resume(control, SITE, epoch=1)
    with pytest.raises(DomainError) as err:
        freeze(control, SITE, epoch=1, hold_s=1, hold_max=1)
    assert err.value.refusal.code == "not_primary"


def test_fence_refuses_an_epoch_not_newer_than_the_rows(control: Engine) -> None:
    for stale in (1, 0):
        with pytest.raises(EpochMismatch):
            fence(control, SITE, epoch=stale, primary_site="B")
    assert read_control(control, SITE).intake_state is IntakeState.OPEN


def test_promote_a_fenced_site_needs_an_epoch_newer_than_its_fencing_and_holds_until_resume(control: Engine) -> None:
    fence(control, SITE, epoch=3, primary_site="B")
    with pytest.raises(EpochMismatch):
        promote(control, SITE, epoch=3)  # B is primary at 3: never two primaries under one epoch
    promoted = promote(control, SITE, epoch=4, now=50.0)
    assert (promoted.role, promoted.epoch, promoted.intake_state, promoted.primary_site, promoted.frozen_at) == \
        (SiteRole.PRIMARY, 4, IntakeState.FROZEN, SITE, 50.0)
    assert promote(control, SITE, epoch=4) == promoted  # idempotent
    assert resume(control, SITE, epoch=4).intake_state is IntakeState.OPEN


def test_promote_a_standby_and_refuse_promoting_a_primary_again(control: Engine, tmp_path) -> None:
    with pytest.raises(IllegalTransition):
        promote(control, SITE, epoch=2)  # already primary at 1: a primary is not promoted again
    url = f"sqlite:///{tmp_path / 'standby.db'}"
    upgrade(url)
    standby = make_engine(url)
    init_site(standby, "B", SiteRole.STANDBY, primary_site=SITE)
    promoted = promote(standby, "B", epoch=2, hold_s=1.5, hold_max=20)
    assert (promoted.role, promoted.epoch, promoted.intake_state, promoted.hold_s, promoted.hold_max) == \
        (SiteRole.PRIMARY, 2, IntakeState.FROZEN, 1.5, 20)
    standby.dispose()
