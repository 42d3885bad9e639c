"""The clearance lifecycle on a real PostgreSQL: batches, officers, payment, amendment, replay, standby refusal."""
from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest
from sqlalchemy import Engine, func, select, update

from standby.clearance.commands import Command, Op, Principal, Role
from standby.clearance.numbers import peek_next_sequence
from standby.domain.states import DeclarationState, Kind, SiteRole
from standby.store.schema import (
    audit_log,
    declarations,
    goods_lines,
    idempotency_keys,
    number_blocks,
    officer_assignments,
    officer_rotation,
    officers,
    site_control,
)
from standby.store.site import init_site, read_control
from standby.synthetic import make_declaration_payload
from tests.integration.postgres_support import (  # noqa: F401  (fixtures included)
    DIGIT,
    OFFICERS_PER_SECTION,
    SITE,
    TARIFF,
    assert_all,
    by_number,
    count,
    declaration,
    engine,
    pipeline,
    pre_declarations,
    rows,
    site,
)

pytestmark = pytest.mark.postgres

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
