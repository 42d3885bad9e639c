"""The 2025 restructure on the embedded default through the runbooks, under declarant traffic through the front: A
primary, B its standby. org-restructure prepares while intake runs, freezes A only for the switch, and B follows by
replication; org-rollback puts every moved record back; org-restructure again gives the same records as the first
time. One story for the module; the tests read what it left."""
from __future__ import annotations

import time

import httpx
import pytest
import ray
from sqlalchemy import select, update

from cutover.actions.failover_journal import step_result
from cutover.orgchange.loader import load_changeset
from cutover.orgchange.resolve import Resolver
from cutover.orgchange.spec import UnitKind
from standby.domain.states import DeclarationState
from standby.store.orgmap import active_map
from standby.store.schema import declarations, enterprises
from tests.conftest import REPO
from tests.integration.http_helpers import payload, post
from tests.integration.test_failback import run_book
from tests.integration.switchover_rig import Traffic, build_rig, declare_on_site, ledger_problems, on_step_intent

pytestmark = pytest.mark.ray

CHANGESET = REPO / "config" / "changesets" / "vn-2025-two-tier" / "changeset.yaml"
LEGACY, NEW = "1900-01-01", "2025-07-01"
OPEN = [s.value for s in DeclarationState if not s.is_terminal]


def step_detail(rig, runbook: str, step: str) -> dict:
    """The journaled outcome of `step` in the newest run of `runbook`."""
    witness = rig.witness()
    run = next(r for r in witness.runs(50) if r.runbook == runbook)
    return step_result(witness.entries(run.run_id), step)


def snapshot(rig, site: str) -> dict:
    engine = rig.engine(site)
    try:
        with engine.connect() as conn:
            return {"map": active_map(conn),
                    "enterprises": [tuple(r) for r in conn.execute(select(enterprises).order_by(
                        enterprises.c.tax_code))],
                    "declarations": {r["number"]: dict(r) for r in conn.execute(select(declarations)).mappings()}}
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def story(tmp_path_factory, org, tariff, ray_session):
    rig = build_rig(tmp_path_factory.mktemp("org-restructure"), org, enterprises_count=400,
                    ray_address=ray.get_runtime_context().gcs_address)
    monkeypatch = pytest.MonkeyPatch()
    try:
        yield _tell(rig, tariff, monkeypatch)
    finally:
        monkeypatch.undo()
        rig.close()


def _tell(rig, tariff, monkeypatch) -> dict:
    codes = rig.tax_codes()
    client = httpx.Client(base_url=rig.front_url, timeout=60)
    closed = _closed_declarations(rig, client, tariff, codes[50:55])
    traffic = Traffic(rig.front_url, rig.tokens, codes[:40], tariff, clients=3).start()
    written: list = []
    try:
        time.sleep(1.0)
        before = snapshot(rig, "A")
        # At the freeze's intent (preparation done, nothing frozen): a live record the preparation never saw, which
        # the switch must re-map as part of its delta.
        on_step_intent(monkeypatch, "freeze", lambda: written.append(
            declare_on_site(rig, "A", tariff, rig.tax_codes()[0], "after-prepare-1")))
        first = run_book(rig, "org-restructure", site="A", standby="B")
        monkeypatch.undo()
        assert first.exit_code == 0, first.output
        applied, switch = snapshot(rig, "A"), step_detail(rig, "org-restructure", "switch")
        time.sleep(0.5)
        back = run_book(rig, "org-rollback", site="A", standby="B")
        assert back.exit_code == 0, back.output
        rolled_back = {"A": snapshot(rig, "A"), "B": snapshot(rig, "B")}
        again = run_book(rig, "org-restructure", site="A", standby="B")
        assert again.exit_code == 0, again.output
        time.sleep(0.5)
    finally:
        ledger = traffic.stop()
    rig.wait_caught_up("A", "B")
    return {"rig": rig, "closed": closed, "before": before, "applied": applied, "rolled_back": rolled_back,
            "again": snapshot(rig, "A"), "on_b": snapshot(rig, "B"), "ledger": ledger, "written": written[0],
            "switch": switch, "output": first.output}


def _closed_declarations(rig, client, tariff, tax_codes) -> list[str]:
    """Declarations pre-declared through the front, then closed (cleared) on A: legal records the change set must
    leave on the legacy map."""
    numbers = [post(client, "/v1/declarations", rig.tokens.declarant(code), payload(tariff, code)).json()["number"]
               for code in tax_codes]
    engine = rig.engine("A", writer=True)
    with engine.begin() as conn:
        conn.execute(update(declarations).where(declarations.c.number.in_(numbers)).values(
            state=DeclarationState.CLEARED.value, closed_at=time.time()))
    engine.dispose()
    return numbers


def test_the_restructure_moves_every_live_record_and_the_standby_follows(story) -> None:
    applied, on_b = story["applied"], story["on_b"]
    assert applied["map"].active_version.isoformat() == NEW and applied["map"].changeset_id == "vn-2025-two-tier"
    assert on_b["map"].active_version.isoformat() == NEW
    assert all(row[4].isoformat() == NEW for row in applied["enterprises"])  # address_valid_from
    live = [d for d in applied["declarations"].values() if d["state"] in OPEN]
    assert live and all(d["declarant_map_version"].isoformat() == NEW for d in live)
    assert story["switch"]["moved"]["enterprise"] == 400


def test_closed_declarations_keep_their_codes_and_map_version(story) -> None:
    for number in story["closed"]:
        before, after = story["before"]["declarations"][number], story["applied"]["declarations"][number]
        assert after["declarant_map_version"].isoformat() == LEGACY
        assert (after["declarant_province_code"], after["declarant_ward_code"]) == (
            before["declarant_province_code"], before["declarant_ward_code"])
        assert after["declarant_prev_map_version"] is None


def test_a_declaration_written_after_preparation_is_re_mapped_by_the_switch(story) -> None:
    written = story["written"]
    assert written.status_code == 201, written.text
    row = story["applied"]["declarations"][written.json()["number"]]
    assert row["declarant_map_version"].isoformat() == NEW and row["declarant_prev_map_version"].isoformat() == LEGACY
    assert story["switch"]["delta"]["declaration"] >= 1


def test_records_on_a_split_ward_land_on_its_default_successor_and_are_flagged(story) -> None:
    changeset, _ = load_changeset(CHANGESET)
    resolver = Resolver(changeset)
    columns = [c.name for c in enterprises.columns]
    flagged = 0
    for row in map(lambda r: dict(zip(columns, r)), story["applied"]["enterprises"]):
        resolution = resolver.resolve(UnitKind.WARD, row["prev_ward_code"])
        assert row["ward_code"] == resolution.default_successor
        if len(resolution.successors) > 1:
            assert row["address_review"] == "vn-2025-two-tier"
            flagged += 1
        else:
            assert row["address_review"] is None
    assert flagged == story["switch"]["flagged"]["enterprise"] > 0


def test_rollback_gives_back_every_previous_code_and_the_standby_follows(story) -> None:
    before, rolled_back = story["before"], story["rolled_back"]
    assert rolled_back["A"]["enterprises"] == before["enterprises"]
    for site in ("A", "B"):
        assert rolled_back[site]["map"].active_version.isoformat() == LEGACY
    for number, row in before["declarations"].items():
        after = rolled_back["A"]["declarations"][number]
        assert (after["declarant_province_code"], after["declarant_ward_code"], after["declarant_map_version"]) == (
            row["declarant_province_code"], row["declarant_ward_code"], row["declarant_map_version"])


def test_apply_rollback_apply_gives_the_same_records_as_the_first_apply(story) -> None:
    assert story["again"]["enterprises"] == story["applied"]["enterprises"]
    for number, row in story["applied"]["declarations"].items():
        again = story["again"]["declarations"][number]
        assert {k: again[k] for k in row if k.startswith("declarant_")} == {
            k: row[k] for k in row if k.startswith("declarant_")}


def test_nothing_acknowledged_to_a_client_is_lost_or_doubled(story) -> None:
    rig = story["rig"]
    mine = set(story["closed"]) | {story["written"].json()["number"]}
    stored = {n: v for n, v in rig.stored("A").items() if n not in mine}
    assert ledger_problems(story["ledger"], stored) == []
    assert story["ledger"].errors == []
    assert rig.verify("A", "B").ok
