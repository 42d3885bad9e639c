"""The store and the clearance pipeline on a real PostgreSQL (production's database; DESIGN §5).

Every test gets a fresh database in the session's throwaway cluster, migrates it with the real Alembic scripts,
seeds it with the real seed code, and drives the real `ClearancePipeline`; assertions read rows back with SQLAlchemy.
"""
from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, event, func, inspect, select, update

from standby.clearance.commands import Command, Op, Outcome, Principal, Role
from standby.clearance.numbers import peek_next_sequence
from standby.clearance.pipeline import ClearancePipeline
from standby.domain.risk import load_risk_rules
from standby.domain.states import DeclarationState, IntakeState, Kind, SiteRole
from standby.domain.tariff import load_tariff
from standby.reference.orgdata import OrgData, load_org_data
from standby.store.engine import make_engine
from standby.store.migrate import current_revision, head_revision, upgrade
from standby.store.schema import (
    audit_log,
    customs_offices,
    declarations,
    enterprises,
    goods_lines,
    idempotency_keys,
    metadata,
    number_blocks,
    officer_assignments,
    officer_rotation,
    officers,
    site_control,
    wards,
)
from standby.store.seed import seed
from standby.store.site import init_site, read_control
from standby.synthetic import make_declaration_payload

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
ORG_DIR = REPO / "config" / "org"
TARIFF = load_tariff(REPO / "config" / "tariffs.yaml")
RULES = load_risk_rules(REPO / "config" / "risk_rules.yaml")
ENTERPRISES = 3000
OFFICERS_PER_SECTION = 3
SITE, DIGIT = "A", 1
OPERATOR = Principal(Role.OPERATOR, "t")


# --- fixtures and helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def org() -> OrgData:
    return load_org_data(ORG_DIR)


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    """A migrated, empty PostgreSQL database (no control row, no data)."""
    upgrade(pg_url)
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


@pytest.fixture
def site(engine: Engine, org: OrgData) -> Engine:
    """Site A as primary, with the reference data, 3,000 enterprises and 3 officers per office section."""
    init_site(engine, SITE, SiteRole.PRIMARY)
    seed(engine, org, enterprises_count=ENTERPRISES, officers_per_section=OFFICERS_PER_SECTION)
    return engine


def pipeline(engine: Engine, site_id: str = SITE, digit: int = DIGIT, **kw) -> ClearancePipeline:
    return ClearancePipeline(engine, site_id, digit, TARIFF, RULES, **kw)


def rows(engine: Engine, query) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def count(engine: Engine, table, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar()


def declaration(engine: Engine, base: str) -> dict:
    (row,) = rows(engine, select(declarations).where(declarations.c.base == base))
    return row


def eligible_tax_codes(engine: Engine) -> list[str]:
    """Enterprises that may register: active, tax overdue at most 90 days."""
    with engine.connect() as conn:
        return list(conn.execute(select(enterprises.c.tax_code).where(
            enterprises.c.status == "active", enterprises.c.tax_debt_days <= 90).order_by(enterprises.c.tax_code)
        ).scalars())


def office_codes(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(customs_offices.c.code).order_by(customs_offices.c.code)).scalars())


def pre_declarations(engine: Engine, n: int, rng: random.Random, key_prefix: str,
                     principal: Principal = OPERATOR, offices: list[str] | None = None) -> list[Command]:
    """`n` IDA/EDA commands for eligible enterprises at random offices, payloads from the synthetic generator."""
    tax_codes, offices = eligible_tax_codes(engine), offices or office_codes(engine)
    assert len(tax_codes) > ENTERPRISES * 0.9
    commands = []
    for i in range(n):
        kind = Kind.IMPORT if rng.random() < 0.7 else Kind.EXPORT
        office = rng.choice(offices)
        payload = make_declaration_payload(rng, kind, rng.choice(tax_codes), office, TARIFF)
        commands.append(Command(Op.PRE_DECLARE, principal, f"{key_prefix}-{i}", payload, office))
    return commands


def by_number(op: Op, number: str, office: str, key: str, principal: Principal = OPERATOR, **extra) -> Command:
    return Command(op, principal, key, {"number": number, **extra}, office)


def assert_all(outcomes: list[Outcome], status: int) -> None:
    bad = [(o.status, o.body) for o in outcomes if o.status != status]
    assert not bad, f"{len(bad)} of {len(outcomes)} outcomes were not {status}; first: {bad[:3]}"


class Interleave:
    """Runs worker B's call at the moment worker A's engine is about to send a statement starting with `prefix`,
    inside A's open transaction, then lets A go on. B either completes (nothing in its way) or waits on a row lock
    A holds (A and B correctly serialised): A continues in both cases, and B finishes once A commits."""

    def __init__(self, engine_a: Engine, prefix: str, b_call, observer: Engine):
        self.engine_a, self.prefix, self.b_call, self.observer = engine_a, prefix.upper(), b_call, observer
        self.fired = threading.Event()
        self.b_result: list = []
        self.b_error: list[BaseException] = []
        self.b_waited_on_lock = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Interleave":
        event.listen(self.engine_a, "before_cursor_execute", self._hook)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(self.engine_a, "before_cursor_execute", self._hook)
        if self._thread is not None:
            self._thread.join(timeout=60)
            assert not self._thread.is_alive(), "worker B never finished"
        assert not self.b_error, self.b_error

    def _run_b(self) -> None:
        try:
            self.b_result.extend(self.b_call())
        except BaseException as exc:  # noqa: BLE001 - re-raised in __exit__
            self.b_error.append(exc)

    def _hook(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self.fired.is_set() or not statement.lstrip().upper().startswith(self.prefix):
            return
        self.fired.set()
        self._thread = threading.Thread(target=self._run_b)
        self._thread.start()
        deadline = time.monotonic() + 30
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(timeout=0.01)
            with self.observer.connect() as obs:
                if obs.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                       "AND datname = current_database()").scalar():
                    self.b_waited_on_lock = True
                    return


# --- schema -----------------------------------------------------------------------------------------------------


def test_upgrade_creates_the_schema_at_head_and_twice_is_a_no_op(pg_url: str) -> None:
    upgrade(pg_url)
    eng = make_engine(pg_url)
    try:
        assert eng.dialect.name == "postgresql"
        assert current_revision(eng) == head_revision()
        tables = set(inspect(eng).get_table_names())
        assert tables == set(metadata.tables) | {"alembic_version"}
        with eng.connect() as conn:
            # The migrated schema is exactly schema.py: columns, types, indexes, constraints.
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata) == []
            checks = {c["name"] for c in inspect(conn).get_check_constraints("declarations")}
            assert {"ck_declarations_kind", "ck_declarations_amendment", "ck_declarations_money"} <= checks
        before = _schema_snapshot(eng)
        init_site(eng, SITE, SiteRole.PRIMARY)

        upgrade(pg_url)  # again: nothing to do, nothing touched

        assert current_revision(eng) == head_revision()
        assert _schema_snapshot(eng) == before
        assert rows(eng, select(site_control.c.site_id, site_control.c.role)) == [{"site_id": "A", "role": "primary"}]
        with eng.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
    finally:
        eng.dispose()


def _schema_snapshot(eng: Engine) -> dict:
    insp = inspect(eng)
    return {t: ([(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)],
                sorted(i["name"] for i in insp.get_indexes(t)))
            for t in sorted(insp.get_table_names())}


# --- site control and seed ----------------------------------------------------------------------------------------


def test_init_site_and_seed(engine: Engine, org: OrgData) -> None:
    control = init_site(engine, SITE, SiteRole.PRIMARY, now=1000.0)
    assert (control.role, control.epoch, control.intake_state, control.primary_site) == (
        SiteRole.PRIMARY, 1, IntakeState.OPEN, SITE)
    assert init_site(engine, SITE, SiteRole.STANDBY) == control  # an existing row is left as it is

    report = seed(engine, org, enterprises_count=ENTERPRISES, officers_per_section=OFFICERS_PER_SECTION)

    sections = 2
    assert report.enterprises == count(engine, enterprises) == ENTERPRISES
    assert report.officers == count(engine, officers) == len(org.offices) * sections * OFFICERS_PER_SECTION
    assert count(engine, officer_rotation) == len(org.offices) * sections
    assert count(engine, officer_rotation, officer_rotation.c.next_position != 0) == 0
    assert count(engine, customs_offices) == report.reference["customs_offices"] == len(org.offices)
    assert count(engine, wards) == len(org.wards_legacy) + len(org.wards_2025)
    # Every enterprise's address is a real ward on the legacy map (the join works on PostgreSQL's types).
    with engine.connect() as conn:
        orphans = conn.execute(select(func.count()).select_from(enterprises).outerjoin(
            wards, (wards.c.code == enterprises.c.ward_code) & (wards.c.valid_from == enterprises.c.address_valid_from)
        ).where(wards.c.code.is_(None))).scalar()
        statuses = dict(conn.execute(select(enterprises.c.status, func.count()).group_by(enterprises.c.status)).all())
        name = conn.execute(select(enterprises.c.name).order_by(enterprises.c.tax_code).limit(1)).scalar()
    assert orphans == 0
    assert statuses["active"] > ENTERPRISES * 0.95
    assert name.startswith("Công ty")  # UTF-8 round trip
    # Officer ids and rotation positions are what the pipeline's reference cache orders by.
    first_office = org.offices[0].code
    assert [r["officer_id"] for r in rows(engine, select(officers.c.officer_id).where(
        officers.c.office_code == first_office, officers.c.section == "01").order_by(officers.c.position))] == [
        f"{first_office}-01-01", f"{first_office}-01-02", f"{first_office}-01-03"]

    again = seed(engine, org, enterprises_count=ENTERPRISES, officers_per_section=OFFICERS_PER_SECTION)
    assert (again.reference, again.enterprises, again.officers) == ({}, 0, 0)
    assert count(engine, enterprises) == ENTERPRISES


# --- clearance lifecycle ----------------------------------------------------------------------------------------------


def test_batch_of_200_pre_declarations_in_one_transaction(site: Engine) -> None:
    commands = pre_declarations(site, 200, random.Random(11), "ida")

    outcomes = pipeline(site).process(commands)

    assert len(outcomes) == 200
    assert_all(outcomes, 201)
    numbers = [o.body["number"] for o in outcomes]
    assert len(set(numbers)) == 200
    assert all(len(n) == 12 and n.isdigit() and n[0] == str(DIGIT) and n[11] == "0" for n in numbers)
    # One block of 1,000 reserved and committed before the batch; the batch used its first 200 numbers in order.
    assert [int(n[1:11]) for n in numbers] == list(range(1, 201))
    assert peek_next_sequence(site, DIGIT) == 1001

    stored = {r["number"]: r for r in rows(site, select(declarations))}
    assert set(stored) == set(numbers)
    lines = rows(site, select(goods_lines.c.declaration_base, func.count().label("n"),
                              func.sum(goods_lines.c.value_vnd).label("value"),
                              func.sum(goods_lines.c.duty_vnd).label("duty"),
                              func.sum(goods_lines.c.vat_vnd).label("vat"))
                 .group_by(goods_lines.c.declaration_base))
    lines = {r["declaration_base"]: r for r in lines}
    for cmd, outcome in zip(commands, outcomes, strict=True):
        row = stored[outcome.body["number"]]
        assert row["state"] == DeclarationState.PRE_DECLARED.value
        assert (row["amendment"], row["site_id"], row["epoch"], row["paid_vnd"]) == (0, SITE, 1, 0)
        assert row["enterprise_tax_code"] == cmd.payload["enterprise_tax_code"]
        assert row["office_code"] == cmd.payload["office_code"] == cmd.office_code
        assert row["section"] == ("01" if cmd.payload["kind"] == "import" else "02")
        assert row["lane"] is None and row["officer_id"] is None and row["registered_at"] is None
        # Totals are the sums of the stored lines, and the answer shows what was stored.
        agg = lines[row["base"]]
        assert row["line_count"] == agg["n"] == len(cmd.payload["goods"])
        assert (row["customs_value_vnd"], row["duty_vnd"], row["vat_vnd"]) == (agg["value"], agg["duty"], agg["vat"])
        assert row["total_vnd"] == row["duty_vnd"] + row["vat_vnd"]
        assert {k: row[k] for k in outcome.body} == outcome.body
    assert count(site, idempotency_keys, idempotency_keys.c.status == 201) == 200
    actions = Counter(r["action"] for r in rows(site, select(audit_log.c.action)))
    imports = sum(1 for c in commands if c.payload["kind"] == "import")
    assert actions == {"IDA": imports, "EDA": 200 - imports}


def test_full_lifecycle_register_decide_pay(site: Engine) -> None:
    worker = pipeline(site)
    created = worker.process(pre_declarations(site, 200, random.Random(12), "ida"))
    assert_all(created, 201)
    office_of = {o.body["number"]: o.body["office_code"] for o in created}

    # Registration: the risk profile picks a lane; yellow and red get the officer whose turn it is.
    registered = worker.process([by_number(Op.REGISTER, n, office_of[n], f"reg-{n}") for n in office_of])
    assert_all(registered, 200)
    lanes = Counter(o.lane for o in registered)
    assert set(lanes) == {"green", "yellow", "red"}, lanes
    expected_state = {"green": {"awaiting_payment", "cleared"}, "yellow": {"document_check"},
                      "red": {"inspection"}}
    stored = {r["number"]: r for r in rows(site, select(declarations))}
    for o in registered:
        row = stored[o.body["number"]]
        assert row["lane"] == o.lane and row["state"] in expected_state[o.lane]
        assert row["lane_rule"] and row["lane_reason"] and row["registered_at"] is not None
        assert (row["officer_id"] is None) == (o.lane == "green")
        if row["state"] == "cleared":  # nothing to pay: cleared on registration
            assert row["total_vnd"] == 0 and row["closed_at"] is not None
    assignments = rows(site, select(officer_assignments).order_by(officer_assignments.c.declaration_base))
    checked = [r for r in stored.values() if r["lane"] != "green"]
    assert len(assignments) == len(checked) == lanes["yellow"] + lanes["red"]
    roster = {r["officer_id"]: r for r in rows(site, select(officers))}
    turns: dict[tuple[str, str], list[int]] = defaultdict(list)
    for a in assignments:
        row = stored[a["declaration_base"] + "0"]
        assert (a["officer_id"], a["lane"], a["amendment"], a["decision"]) == (row["officer_id"], row["lane"], 0, None)
        officer = roster[a["officer_id"]]
        assert (officer["office_code"], officer["section"]) == (row["office_code"], row["section"]) == (
            a["office_code"], a["section"])
        turns[(a["office_code"], a["section"])].append(officer["position"])
    # Rotation: each office section's officers take turns in registered order, and the cursor is stored.
    cursors = {(r["office_code"], r["section"]): r["next_position"] for r in rows(site, select(officer_rotation))}
    for key, positions in turns.items():
        assert positions == [i % OFFICERS_PER_SECTION for i in range(len(positions))], key
        assert cursors[key] == (len(positions) - 1) % OFFICERS_PER_SECTION + 1, key

    # Officer decisions: only the assigned officer may decide; one red is rejected, the rest approved.
    first = checked[0]
    stranger = next(o for o in roster if o != first["officer_id"])
    (wrong,) = worker.process([by_number(Op.DECIDE, first["number"], first["office_code"], "x",
                                         Principal(Role.OFFICER, stranger), decision="approve")])
    assert (wrong.status, wrong.body["error"]["code"]) == (403, "not_assigned")
    rejected = next(r["number"] for r in checked if r["lane"] == "red")
    decisions = [by_number(Op.DECIDE, r["number"], r["office_code"], f"dec-{r['number']}",
                           Principal(Role.OFFICER, r["officer_id"]),
                           decision="reject" if r["number"] == rejected else "approve", note="checked")
                 for r in checked]
    assert_all(worker.process(decisions), 200)
    stored = {r["number"]: r for r in rows(site, select(declarations))}
    assert stored[rejected]["state"] == "rejected" and stored[rejected]["closed_at"] is not None
    assert all(stored[r["number"]]["state"] in ("awaiting_payment", "cleared")
               for r in checked if r["number"] != rejected)
    decided = rows(site, select(officer_assignments))
    assert all(a["decided_at"] is not None and a["decision_note"] == "checked" for a in decided)
    assert Counter(a["decision"] for a in decided) == {"approve": len(checked) - 1, "reject": 1}

    # Payment: exactly the outstanding amount, then the declaration is cleared.
    awaiting = [r for r in stored.values() if r["state"] == "awaiting_payment"]
    assert awaiting
    short = awaiting[0]
    (mismatch,) = worker.process([by_number(Op.PAY, short["number"], short["office_code"], "short",
                                            amount_vnd=short["total_vnd"] - short["paid_vnd"] + 1)])
    assert (mismatch.status, mismatch.body["error"]["code"]) == (422, "amount_mismatch")
    payments = [by_number(Op.PAY, r["number"], r["office_code"], f"pay-{r['number']}",
                          amount_vnd=r["total_vnd"] - r["paid_vnd"]) for r in awaiting]
    assert_all(worker.process(payments), 200)

    final = {r["number"]: r for r in rows(site, select(declarations))}
    assert Counter(r["state"] for r in final.values()) == {"cleared": 199, "rejected": 1}
    for r in final.values():
        assert r["closed_at"] is not None
        if r["state"] == "cleared":
            assert r["paid_vnd"] == r["total_vnd"]
    (late,) = worker.process([by_number(Op.PAY, short["number"], short["office_code"], "late", amount_vnd=0)])
    assert (late.status, late.body["error"]["code"]) == (409, "not_payable")
    actions = Counter(r["action"] for r in rows(site, select(audit_log.c.action)))
    assert actions["decide"] == len(checked) and actions["pay"] == len(awaiting)
    assert actions["IDC"] + actions["EDC"] == 200


def test_amendment_numbering(site: Engine) -> None:
    worker = pipeline(site)
    rng = random.Random(13)
    commands = pre_declarations(site, 20, rng, "ida")
    created = worker.process(commands)
    assert_all(created, 201)
    goods_of = {o.body["base"]: c.payload["goods"] for c, o in zip(commands, created, strict=True)}
    first = created[0].body
    number, office, base = first["number"], first["office_code"], first["base"]
    goods = make_declaration_payload(rng, Kind(first["kind"]), first["enterprise_tax_code"], office,
                                     TARIFF)["goods"]

    # Amended while pre-declared: same declaration (same base, same row), 12th digit + 1, lines replaced.
    (amended,) = worker.process([by_number(Op.AMEND, number, office, "ide-1", goods=goods)])

    assert amended.status == 200
    new_number = amended.body["number"]
    assert new_number == base + "1" and new_number[:11] == number[:11]
    row = declaration(site, base)
    assert (row["number"], row["amendment"], row["state"]) == (new_number, 1, "pre_declared")
    assert row["line_count"] == len(goods) == count(site, goods_lines, goods_lines.c.declaration_base == base)
    assert count(site, declarations) == 20
    assert [r["action"] for r in rows(site, select(audit_log.c.action).where(audit_log.c.target == new_number))] == [
        "IDE" if first["kind"] == "import" else "EDE"]

    # The old number is refused for every by-number operation.
    stale = worker.process([
        by_number(Op.REGISTER, number, office, "old-reg"),
        by_number(Op.AMEND, number, office, "old-ide", goods=goods),
        by_number(Op.PAY, number, office, "old-pay", amount_vnd=1),
        by_number(Op.DECIDE, number, office, "old-dec", decision="approve"),
    ])
    for o in stale:
        assert (o.status, o.body["error"]["code"]) == (409, "number_superseded")
        assert new_number in o.body["error"]["message"]
    assert declaration(site, base)["number"] == new_number

    current = {o.body["base"]: (o.body["number"], o.body["office_code"]) for o in created}
    current[base] = (new_number, office)
    registered = worker.process([by_number(Op.REGISTER, n, off, f"reg-{n}") for n, off in current.values()])
    assert_all(registered, 200)

    # Amended after registration into a check lane: back to pre_declared, officer and lane cleared; registered
    # again with the same goods, it lands in the same lane and gets an assignment for the new amendment.
    checked = next(o.body for o in registered if o.lane != "green")
    c_base, c_office = checked["base"], checked["office_code"]
    (again,) = worker.process([by_number(Op.AMEND, checked["number"], c_office, "ide-2", goods=goods_of[c_base])])
    assert again.status == 200
    c_number = again.body["number"]
    assert c_number == c_base + str(checked["amendment"] + 1)
    row = declaration(site, c_base)
    assert (row["state"], row["lane"], row["officer_id"], row["registered_at"]) == ("pre_declared", None, None, None)
    (reg2,) = worker.process([by_number(Op.REGISTER, c_number, c_office, "reg-2")])
    assert reg2.status == 200 and reg2.lane == checked["lane"]
    assigned = {a["amendment"]: a for a in rows(site, select(officer_assignments).where(
        officer_assignments.c.declaration_base == c_base))}
    assert set(assigned) == {checked["amendment"], checked["amendment"] + 1}
    assert assigned[checked["amendment"] + 1]["officer_id"] == declaration(site, c_base)["officer_id"]

    # After duty is paid, an amendment is refused and the number stays.
    payable = next(o.body for o in registered if o.body["state"] == "awaiting_payment" and o.body["total_vnd"] > 0)
    (paid,) = worker.process([by_number(Op.PAY, payable["number"], payable["office_code"], "pay",
                                        amount_vnd=payable["total_vnd"])])
    assert paid.status == 200 and paid.body["state"] == "cleared"
    (late,) = worker.process([by_number(Op.AMEND, payable["number"], payable["office_code"], "ide-3", goods=goods)])
    assert (late.status, late.body["error"]["code"]) == (409, "amend_after_payment")
    assert declaration(site, payable["base"])["number"] == payable["number"]


def test_idempotent_replay(site: Engine) -> None:
    worker = pipeline(site)
    (cmd,) = pre_declarations(site, 1, random.Random(14), "same-key")

    (first,) = worker.process([cmd])
    (second,) = worker.process([cmd])
    # A restarted worker (a new pipeline, nothing in memory) answers from the stored record too.
    (third,) = pipeline(site).process([cmd])

    assert first.status == 201 and not first.replayed
    for replay in (second, third):
        assert replay.replayed and replay.status == 201 and replay.body == first.body
    assert count(site, declarations) == 1
    assert count(site, declarations, declarations.c.number == first.body["number"]) == 1
    assert count(site, idempotency_keys) == 1 and count(site, audit_log) == 1

    # The same key twice in one batch: the second is the first's answer.
    (other,) = pre_declarations(site, 1, random.Random(15), "batch-key")
    a, b = worker.process([other, other])
    assert (a.replayed, b.replayed) == (False, True) and a.body == b.body
    assert count(site, declarations) == 2

    # The same key with a different body is refused and writes nothing.
    changed = Command(cmd.op, cmd.principal, cmd.idempotency_key, {**cmd.payload, "office_code": other.office_code},
                      other.office_code)
    (reused,) = worker.process([changed])
    assert (reused.status, reused.body["error"]["code"]) == (422, "idempotency_key_reused")
    assert count(site, declarations) == 2

    # A replayed registration does not assign a second officer or move the rotation.
    number, office = first.body["number"], first.body["office_code"]
    reg = by_number(Op.REGISTER, number, office, "reg")
    (r1,) = worker.process([reg])
    before = (rows(site, select(officer_rotation)), count(site, officer_assignments), count(site, audit_log))
    (r2,) = worker.process([reg])
    assert r1.status == r2.status == 200 and r2.replayed and r2.body == r1.body and r2.lane == r1.lane
    assert (rows(site, select(officer_rotation)), count(site, officer_assignments), count(site, audit_log)) == before


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
    errors: list[BaseException] = []
    start = threading.Barrier(len(work))

    def run(w: str) -> None:
        try:
            worker = pipeline(engines[w], block_size=block)
            start.wait()
            for i in range(batches):
                results[w].extend(worker.process(work[w][i * per_batch:(i + 1) * per_batch]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in work]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        for eng in engines.values():
            eng.dispose()
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)

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


# --- standby ----------------------------------------------------------------------------------------------------


def _standby_commands(site: Engine) -> tuple[list[Command], dict]:
    """Declarations made while site A was primary, and one command of every kind aimed at them."""
    created = pipeline(site).process(pre_declarations(site, 4, random.Random(17), "ida"))
    assert_all(created, 201)
    target = created[0].body
    number, office = target["number"], target["office_code"]
    commands = pre_declarations(site, 5, random.Random(18), "standby-ida") + [
        by_number(Op.REGISTER, number, office, "s-reg"),
        by_number(Op.AMEND, number, office, "s-ide", goods=[]),
        by_number(Op.PAY, number, office, "s-pay", amount_vnd=1),
        by_number(Op.DECIDE, number, office, "s-dec", Principal(Role.OFFICER, f"{office}-01-01"), decision="approve"),
    ]
    return commands, target


def _snapshot(engine: Engine) -> dict:
    return {t.name: rows(engine, select(t).order_by(*t.primary_key.columns)) for t in (
        declarations, goods_lines, officer_assignments, officer_rotation, idempotency_keys, audit_log)}


def test_standby_site_refuses_every_write(site: Engine) -> None:
    commands, _ = _standby_commands(site)
    with site.begin() as conn:  # site A becomes a standby of site B
        conn.execute(update(site_control).where(site_control.c.site_id == SITE).values(
            role=SiteRole.STANDBY.value, primary_site="B"))
    assert read_control(site, SITE).role is SiteRole.STANDBY
    before = _snapshot(site)

    outcomes = pipeline(site).process(commands)

    assert len(outcomes) == len(commands)
    for o in outcomes:
        assert o.status == 503 and not o.replayed
        assert o.body["error"]["code"] == "not_primary"
        assert "site B" in o.body["error"]["message"]
    assert _snapshot(site) == before


def test_standby_site_initialised_as_standby_refuses_and_writes_nothing(site: Engine) -> None:
    """A second site row, B, initialised as a standby of A in the same database: its worker refuses everything
    and leaves no trace, not even a reserved number block (a standby's database is a replica of the primary's)."""
    commands, _ = _standby_commands(site)
    init_site(site, "B", SiteRole.STANDBY, primary_site=SITE)
    before = _snapshot(site)
    blocks_before = rows(site, select(number_blocks).order_by(number_blocks.c.site_digit))

    outcomes = pipeline(site, site_id="B", digit=2).process(commands)

    assert {(o.status, o.body["error"]["code"]) for o in outcomes} == {(503, "not_primary")}
    assert _snapshot(site) == before
    assert rows(site, select(number_blocks).order_by(number_blocks.c.site_digit)) == blocks_before
