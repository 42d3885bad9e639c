"""Two workers on one PostgreSQL database: numbers, first blocks and officer rotation under exact interleavings."""
from __future__ import annotations

import random
import threading

import pytest
from sqlalchemy import Engine, select

from standby.clearance.commands import Command, Op, Outcome
from standby.clearance.numbers import peek_next_sequence
from standby.domain.states import Kind
from standby.store.engine import make_engine
from standby.store.schema import (
    declarations,
    enterprises,
    idempotency_keys,
    officer_assignments,
    officer_rotation,
)
from standby.synthetic import make_declaration_payload
from tests.integration.postgres_support import (  # noqa: F401  (fixtures included)
    DIGIT,
    OPERATOR,
    TARIFF,
    Interleave,
    assert_all,
    by_number,
    count,
    engine,
    office_codes,
    pipeline,
    pre_declarations,
    rows,
    run_workers,
    site,
)

pytestmark = pytest.mark.postgres

def test_two_workers_never_issue_the_same_number(site: Engine, pg_url: str) -> None:
    """Two workers (own engines, own pipelines) pre-declare at the same time from two threads; numbers come from
    blocks each reserves in its own committed transaction, so no number is issued twice."""
    batches, per_batch, block = 8, 25, 50
    offices = office_codes(site)
    work = {w: pre_declarations(site, batches * per_batch, random.Random(100 + i), f"w{w}",
                                offices=offices[i::2])  # each worker owns its own offices, as partitions do
            for i, w in enumerate(("a", "b"))}
    engines = {w: make_engine(pg_url) for w in work}
    results: dict[str, list[Outcome]] = {w: [] for w in work}
    start = threading.Barrier(len(work))

    def run(w: str) -> None:
        worker = pipeline(engines[w], block_size=block)
        start.wait()
        for i in range(batches):
            results[w].extend(worker.process(work[w][i * per_batch:(i + 1) * per_batch]))

    run_workers(run, work, engines)

    for w in work:
        assert_all(results[w], 201)
    numbers = {w: [o.body["number"] for o in results[w]] for w in work}
    everything = numbers["a"] + numbers["b"]
    assert len(everything) == len(set(everything)) == 2 * batches * per_batch
    # Each worker drew from its own blocks.
    blocks = {w: {(int(n[1:11]) - 1) // block for n in numbers[w]} for w in work}
    assert not blocks["a"] & blocks["b"]
    assert max(int(n[1:11]) for n in everything) < peek_next_sequence(site, DIGIT)
    assert {r["number"] for r in rows(site, select(declarations.c.number))} == set(everything)
    assert count(site, idempotency_keys) == len(everything)


def test_two_workers_taking_their_first_block_at_once(site: Engine, pg_url: str) -> None:
    """On a fresh site neither worker finds a number_blocks row. Worker B reserves its first block while worker A
    is between its UPDATE (no row) and its INSERT. SQLite cannot interleave this way (BEGIN IMMEDIATE serialises
    the two reservations); PostgreSQL can, and A's INSERT then hits the primary key B just committed.

    Both commands must still be accepted, with different numbers."""
    assert peek_next_sequence(site, DIGIT) is None
    cmd_a, cmd_b = pre_declarations(site, 2, random.Random(16), "first-block")
    engine_a, engine_b = make_engine(pg_url), make_engine(pg_url)
    worker_a, worker_b = pipeline(engine_a), pipeline(engine_b)
    try:
        with Interleave(engine_a, "INSERT INTO number_blocks", lambda: worker_b.process([cmd_b]), site) as race:
            (answer_a,) = worker_a.process([cmd_a])
    finally:
        engine_a.dispose()
        engine_b.dispose()

    assert race.fired.is_set()
    answer_b = race.b_result
    assert [o.status for o in answer_b] == [201], answer_b
    assert answer_a.status == 201, answer_a.body
    assert answer_a.body["number"] != answer_b[0].body["number"]
    assert count(site, declarations) == 2


def test_two_workers_registering_at_one_office_share_its_rotation(site: Engine, pg_url: str) -> None:
    """Offices are partitioned over workers, but while partitions move (a worker restarts, the partition count
    changes) two workers can register at the same office at once. Worker B registers while worker A has read the
    office's rotation cursor and not yet written it. On SQLite B waits for A (BEGIN IMMEDIATE); on PostgreSQL
    (READ COMMITTED, the cursor read without FOR UPDATE) both read the same cursor, so the same officer gets both
    declarations and one turn of the rotation is lost. Each officer must get one of the two."""
    office = office_codes(site)[0]
    with site.connect() as conn:  # watch-list enterprises are always checked by an officer (yellow or red)
        watched = list(conn.execute(select(enterprises.c.tax_code).where(
            enterprises.c.risk_class == "watch", enterprises.c.status == "active",
            enterprises.c.tax_debt_days <= 90).order_by(enterprises.c.tax_code).limit(2)).scalars())
    rng = random.Random(19)
    created = pipeline(site).process([
        Command(Op.PRE_DECLARE, OPERATOR, f"ida-{i}", make_declaration_payload(rng, Kind.IMPORT, tax, office, TARIFF),
                office) for i, tax in enumerate(watched)])
    assert_all(created, 201)
    n_a, n_b = (o.body["number"] for o in created)
    engine_a, engine_b = make_engine(pg_url), make_engine(pg_url)
    worker_a, worker_b = pipeline(engine_a), pipeline(engine_b)
    try:
        with Interleave(engine_a, "UPDATE officer_rotation",
                        lambda: worker_b.process([by_number(Op.REGISTER, n_b, office, "reg-b")]), site) as race:
            (answer_a,) = worker_a.process([by_number(Op.REGISTER, n_a, office, "reg-a")])
    finally:
        engine_a.dispose()
        engine_b.dispose()

    assert race.fired.is_set()
    answer_b = race.b_result
    assert answer_a.status == 200 and [o.status for o in answer_b] == [200]
    assert answer_a.lane != "green" and answer_b[0].lane != "green"
    assigned = {r["declaration_base"]: r["officer_id"] for r in rows(site, select(officer_assignments))}
    cursor = rows(site, select(officer_rotation.c.next_position).where(
        officer_rotation.c.office_code == office, officer_rotation.c.section == "01"))
    assert sorted(assigned.values()) == [f"{office}-01-01", f"{office}-01-02"], assigned
    assert cursor == [{"next_position": 2}]
