"""The clearance lifecycle through the real pipeline on real SQLite and real PostgreSQL."""
from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import select

from standby.clearance.commands import Command, Op, Principal, Role
from standby.clearance.pipeline import STORED_PROBE_CHUNK, ClearancePipeline
from standby.domain.states import IntakeState, Kind, SiteRole
from standby.store.schema import audit_log, declarations, goods_lines, idempotency_keys, officer_assignments
from standby.store.site import set_intake
from tests.conftest import make_site_db
from tests.integration.desk import OPERATOR, Desk


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def site(request, tmp_path, org):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return make_site_db(tmp_path, org, url=url)


@pytest.fixture
def desk(site, tariff, rules):
    engine = site.engine()
    yield Desk(ClearancePipeline(engine, "A", 1, tariff, rules, block_size=50), tariff)
    engine.dispose()


def rows(site, table, *where):
    engine = site.engine(writer=False)
    with engine.connect() as conn:
        out = [dict(r) for r in conn.execute(select(table).where(*where)).mappings()]
    engine.dispose()
    return out


def test_pre_declare_assigns_a_number_and_computes_tax(site, desk, tariff):
    tax_code = site.active_enterprises(1)[0]
    made = desk.predeclare(tax_code)
    assert made.status == 201 and made.body["state"] == "pre_declared"
    number = made.body["number"]
    assert len(number) == 12 and number.startswith("1") and number.endswith("0")
    stored = rows(site, declarations, declarations.c.base == number[:11])[0]
    lines = rows(site, goods_lines, goods_lines.c.declaration_base == number[:11])
    assert stored["total_vnd"] == stored["duty_vnd"] + stored["vat_vnd"] == made.body["total_vnd"]
    assert sum(line["value_vnd"] for line in lines) == stored["customs_value_vnd"] > 0
    assert stored["epoch"] == 1 and stored["site_id"] == "A"


def test_green_lane_clears_on_payment(site, desk):
    green = desk.until_lane(site.active_enterprises(40), "green")
    number, due = green.body["number"], green.body["total_vnd"]
    assert green.body["lane_rule"] and green.body["lane_reason"]  # explainable: which rule decided, and why
    if due:
        assert green.body["state"] == "awaiting_payment"
        short = desk.pay(number, due - 1)
        assert short.status == 422 and short.body["error"]["code"] == "amount_mismatch"
        paid = desk.pay(number, due)
        assert paid.ok, paid.body
        assert paid.body["state"] == "cleared"
    else:
        assert green.body["state"] == "cleared"


def test_yellow_lane_goes_to_the_assigned_officer_who_clears_it(site, desk):
    yellow = desk.until_lane(site.active_enterprises(40), "yellow")
    number, officer = yellow.body["number"], yellow.body["officer_id"]
    assert yellow.body["state"] == "document_check" and officer.startswith("01CA-01-")
    others = [o for o in site.officers_of("01CA", "01") if o != officer]
    refused = desk.decide(number, others[0])
    assert refused.status == 403 and refused.body["error"]["code"] == "not_assigned"
    approved = desk.decide(number, officer)
    assert approved.ok and approved.body["state"] in ("awaiting_payment", "cleared")
    assignment = rows(site, officer_assignments, officer_assignments.c.declaration_base == number[:11])[0]
    assert assignment["decision"] == "approve" and assignment["officer_id"] == officer


def test_red_lane_inspection_can_reject(site, desk):
    red = desk.until_lane(site.active_enterprises(60), "red", tries=1500)
    assert red.body["state"] == "inspection"
    rejected = desk.decide(red.body["number"], red.body["officer_id"], "reject")
    assert rejected.ok and rejected.body["state"] == "rejected"
    again = desk.decide(red.body["number"], red.body["officer_id"], "approve")
    assert again.status == 409 and again.body["error"]["code"] == "illegal_transition"


def test_officers_are_assigned_in_rotation_per_office_and_section(site, desk):
    tax_codes = site.active_enterprises(60)
    picked: dict[str, list[str]] = {"01": [], "02": []}
    for i in range(300):
        kind = Kind.IMPORT if i % 2 else Kind.EXPORT
        made = desk.predeclare(tax_codes[i % len(tax_codes)], "79CA", kind)
        reg = desk.register(made.body["number"])
        if reg.ok and reg.body["lane"] != "green":
            picked[kind.section].append(reg.body["officer_id"])
    for section, officers in picked.items():
        registered = site.officers_of("79CA", section)
        assert len(officers) >= 2 * len(registered)
        expected = [registered[i % len(registered)] for i in range(len(officers))]
        assert officers == expected, f"section {section} broke rotation"


def test_amendment_increments_the_twelfth_digit_and_supersedes_the_old_number(site, desk):
    tax_code = site.active_enterprises(1)[0]
    made = desk.predeclare(tax_code)
    first = made.body["number"]
    amended = desk.amend(first, desk.payload(tax_code)["goods"])
    assert amended.ok and amended.body["number"] == first[:11] + "1" and amended.body["amendment"] == 1
    stale = desk.register(first)
    assert stale.status == 409 and stale.body["error"]["code"] == "number_superseded"
    assert amended.body["number"] in stale.body["error"]["message"]
    again = desk.amend(amended.body["number"], desk.payload(tax_code)["goods"])
    assert again.body["number"].endswith("2")
    registered = desk.register(again.body["number"])
    assert registered.ok and registered.body["lane"]
    audit = rows(site, audit_log, audit_log.c.action == "IDE")
    assert [a["target"] for a in audit] == [first[:11] + "1", first[:11] + "2"]


def test_blocked_enterprises_are_refused_at_registration_with_the_reason(site, desk):
    for status in ("suspended", "dissolved"):
        tax_code = site.blocked_enterprise(status)
        made = desk.predeclare(tax_code)
        assert made.ok
        refused = desk.register(made.body["number"])
        assert refused.status == 422 and refused.body["error"]["code"] == "enterprise_blocked"
        assert status in refused.body["error"]["message"] and tax_code in refused.body["error"]["message"]
        assert rows(site, declarations, declarations.c.base == made.body["number"][:11])[0]["state"] == "pre_declared"


def test_a_retried_command_returns_the_first_answer_and_writes_nothing_more(site, desk):
    tax_code = site.active_enterprises(1)[0]
    payload = desk.payload(tax_code)
    first = desk.one(Op.PRE_DECLARE, payload, key="same-key")
    again = desk.one(Op.PRE_DECLARE, payload, key="same-key")
    assert again.replayed and again.body == first.body
    assert len(rows(site, declarations, declarations.c.enterprise_tax_code == tax_code)) == 1
    other_body = desk.one(Op.PRE_DECLARE, desk.payload(tax_code), key="same-key")
    assert other_body.status == 422 and other_body.body["error"]["code"] == "idempotency_key_reused"


def test_two_principals_with_the_same_key_each_get_their_own_answer(site, desk):
    # The small-batch lookup reads the cross product of principals and keys: here it reads p2's record of key "a"
    # while p1 sends key "a" for the first time, which must not be answered from p2's record.
    first, second = site.active_enterprises(2)
    p1, p2 = Principal(Role.DECLARANT, first), Principal(Role.DECLARANT, second)
    earlier = desk.pipeline.process([Command(Op.PRE_DECLARE, p2, "a", desk.payload(second), "01CA")])[0]
    own, other = desk.pipeline.process([Command(Op.PRE_DECLARE, p1, "a", desk.payload(first), "01CA"),
                                        Command(Op.PRE_DECLARE, p2, "b", desk.payload(second), "01CA")])
    assert earlier.status == own.status == other.status == 201
    assert not own.replayed and own.body["enterprise_tax_code"] == first
    assert len({earlier.body["number"], own.body["number"], other.body["number"]}) == 3


@pytest.mark.parametrize("declarants", [2, 40])  # one probe for stored answers, and five
def test_a_replayed_batch_answers_every_command_from_its_own_record(site, desk, declarants):
    tax_codes = site.active_enterprises(declarants)
    batch = [Command(Op.PRE_DECLARE, Principal(Role.DECLARANT, tax_codes[i % declarants]), f"replay-{i}",
                     desk.payload(tax_codes[i % declarants]), "01CA") for i in range(declarants * 2)]
    assert (len(batch) <= STORED_PROBE_CHUNK) == (declarants == 2)
    first = desk.pipeline.process(batch)
    again = desk.pipeline.process(batch)
    assert all(o.status == 201 for o in first)
    assert [o.body for o in again] == [o.body for o in first] and all(o.replayed for o in again)
    stored = rows(site, declarations, declarations.c.enterprise_tax_code.in_(tax_codes))
    assert len(stored) == len(batch)


def test_refusals_write_nothing_but_their_idempotency_record(site, desk):
    tax_code = site.active_enterprises(1)[0]
    bad = desk.payload(tax_code)
    bad["goods"][0]["hs_code"] = "77000000"  # chapter 77 is reserved
    before = len(rows(site, declarations))
    refused = desk.one(Op.PRE_DECLARE, bad)
    assert refused.status == 422 and refused.body["error"]["field"] == "goods[0].hs_code"
    assert len(rows(site, declarations)) == before
    assert len(rows(site, goods_lines, goods_lines.c.hs_code == "77000000")) == 0


def test_one_batch_mixes_accepted_and_refused_commands(site, desk):
    tax_codes = site.active_enterprises(5)
    batch = [Command(Op.PRE_DECLARE, OPERATOR, f"mix-{i}", desk.payload(t), "01CA")
             for i, t in enumerate(tax_codes)]
    batch.insert(2, Command(Op.PRE_DECLARE, OPERATOR, "mix-bad", {**desk.payload(tax_codes[0]),
                                                                          "office_code": "ZZZZ"}, "ZZZZ"))
    outcomes = desk.pipeline.process(batch)
    assert [o.status for o in outcomes] == [201, 201, 422, 201, 201, 201]
    assert outcomes[2].body["error"]["code"] == "office_unknown"
    numbers = [o.body["number"] for o in outcomes if o.ok]
    assert len(set(numbers)) == 5


def test_a_standby_refuses_every_write_naming_the_primary(tmp_path, org, tariff, rules):
    standby = make_site_db(tmp_path, org, site_id="B", role=SiteRole.STANDBY, enterprises_count=200, site_digit=2)
    engine = standby.engine()
    desk = Desk(ClearancePipeline(engine, "B", 2, tariff, rules), tariff)
    refused = desk.predeclare(standby.active_enterprises(1)[0])
    assert refused.status == 503 and refused.body["error"]["code"] == "not_primary"
    assert "site A" in refused.body["error"]["message"]
    assert rows(standby, declarations) == [] and rows(standby, idempotency_keys) == []
    engine.dispose()


def test_frozen_intake_refuses_without_writing(site, desk):
    set_intake(site.engine(), "A", IntakeState.FROZEN)
    refused = desk.predeclare(site.active_enterprises(1)[0])
    assert refused.status == 503 and refused.body["error"]["code"] == "intake_frozen"
    set_intake(site.engine(), "A", IntakeState.OPEN)
    assert desk.predeclare(site.active_enterprises(1)[0]).ok


def test_lane_mix_on_the_synthetic_population_is_near_the_design_reference(site, desk):
    tax_codes = site.active_enterprises(2000)
    lanes = Counter()
    for i in range(0, 1200, 200):
        made = desk.pipeline.process([Command(Op.PRE_DECLARE, OPERATOR, f"mixp-{i + j}",
                                              desk.payload(tax_codes[(i + j) % len(tax_codes)], office), office)
                                      for j, office in enumerate(["01CA", "79CA", "31CA", "48CA"] * 50)])
        regs = desk.pipeline.process([Command(Op.REGISTER, OPERATOR, f"mixr-{i + j}", {"number": m.body["number"]},
                                              "x") for j, m in enumerate(made)])
        lanes.update(r.body["lane"] for r in regs if r.ok)
    total = sum(lanes.values())
    shares = {lane: lanes[lane] / total for lane in ("green", "yellow", "red")}
    assert 0.45 <= shares["green"] <= 0.61 and 0.32 <= shares["yellow"] <= 0.48 and 0.03 <= shares["red"] <= 0.11, shares
