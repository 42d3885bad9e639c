"""Failback with reconcile on the embedded default: A primary under declarant traffic through the front, the
replicator A -> B paused so A acknowledges writes B never gets (the lost tail), A's serving stopped, the failover
runbook to B, B taking writes (among them one to a declaration A had changed in its tail: a conflict), then the
failback runbook: A's tail moved into its quarantine, A a standby of B (verify clean), every lost declaration that
did not change on B re-applied there under its own number, the conflict listed, an old request retried through the
front answered as before, and every decision audited."""
from __future__ import annotations

import json
import time

import httpx
import pytest
import ray
from click.testing import CliRunner

from cutover.actions.failover_journal import divergence_of, latest_failover, step_result
from cutover.failback import QuarantineStatus, quarantined
from replication.divergence import last_images, unapplied_changes
from replication.replicator import partition_of
from replication.sqlite_source import SqliteChangeSource
from standby.domain.states import IntakeState, SiteRole
from standby.site_process import BackgroundServer, build_site
from standby.store.schema import number_blocks
from standbyctl.cli import main
from tests.integration.http_helpers import get, payload, post
from tests.integration.switchover_rig import Traffic, build_rig, pause_replicators, running_replicators

pytestmark = pytest.mark.ray


def run_book(rig, name: str, **params):
    argv = ["--config", str(rig.config), "runbook", "run", name, "--yes", "--operator", "test-operator",
            "--metrics-port", "0"]
    for key, value in params.items():
        argv += ["--param", f"{key}={value}"]
    return CliRunner().invoke(main, argv)


def last_run(rig, runbook: str):
    return next(r for r in rig.witness().runs(50) if r.runbook == runbook)


@pytest.fixture(scope="module")
def story(tmp_path_factory, org, tariff, ray_session):
    """The whole story once for the module; the tests below read what it left."""
    tmp = tmp_path_factory.mktemp("failback")
    rig = build_rig(tmp, org, enterprises_count=300, ray_address=ray.get_runtime_context().gcs_address)
    try:
        yield tell(rig, tariff)
    finally:
        rig.close()


def tell(rig, tariff, fail_back=None) -> dict:
    """Run the story on `rig` (see the module docstring) and return what the checks below read. `fail_back(rig)`
    runs the failback and returns something with `exit_code` and `output` (default: one uninterrupted run)."""
    return _tell(rig, tariff, fail_back or (lambda r: run_book(r, "failback", site="A", primary="B")))


def _tell(rig, tariff, fail_back) -> dict:
    codes = rig.tax_codes()
    client = httpx.Client(base_url=rig.front_url, timeout=120)
    declarant = rig.tokens.declarant(codes[50])
    traffic = Traffic(rig.front_url, rig.tokens, codes[:40], tariff, clients=3).start()
    told: dict = {}
    try:
        time.sleep(0.5)
        # Two declarations B gets while the stream runs: A changes both in its lost tail, B only one of them later.
        conflict, kept = (post(client, "/v1/declarations", declarant, payload(tariff, codes[50])).json()["number"]
                          for _ in range(2))
        rig.wait_caught_up("A", "B")
        pause_replicators(rig)  # B applies nothing more: what A takes from now on is its lost tail
        for number in (conflict, kept):
            answer = post(client, f"/v1/declarations/{number}/registration", declarant)
            assert answer.status_code == 200, answer.text
            told[number] = answer.json()
        lost_body = payload(tariff, codes[50])
        lost = post(client, "/v1/declarations", declarant, lost_body, key="lost-request-1")
        assert lost.status_code == 201, lost.text
        time.sleep(1.0)
        acknowledged_by_a = dict(traffic.ledger.acknowledged)
        site, server = rig.served.pop("A")  # A dies (its HTTP stops; the front holds writes meanwhile)
        server.stop()
        site.close()
        on_b_at_failover = set(rig.stored("B"))
        a_head = _head(rig, "A")
        failover = run_book(rig, "failover", **{"from": "A", "to": "B"})
        assert failover.exit_code == 0, failover.output
        on_b = post(client, f"/v1/declarations/{conflict}/registration", declarant)  # B changes it too
        assert on_b.status_code == 200, on_b.text
        time.sleep(1.0)
        failback = fail_back(rig)
        assert failback.exit_code == 0, failback.output
        time.sleep(0.5)
    finally:
        ledger = traffic.stop()
    return {"rig": rig, "client": client, "declarant": declarant, "conflict": conflict, "kept": kept,
            "registered_on_a": told, "lost": lost.json(), "lost_body": lost_body, "ledger": ledger,
            "acknowledged_by_a": acknowledged_by_a, "on_b_at_failover": on_b_at_failover, "a_head": a_head,
            "failover_run": latest_failover(rig.witness(), "B", "A"), "failback_run": last_run(rig, "failback").run_id}


def _head(rig, site_id: str) -> int | None:
    """The change log's counter (SQLite only: PostgreSQL's WAL position moves with any write)."""
    if not rig.settings.database_url(site_id).startswith("sqlite"):
        return None
    source = SqliteChangeSource(rig.settings.database_url(site_id))
    try:
        return source.head()
    finally:
        source.close()


def _held_rows(rig):
    engine = rig.engine("A")
    try:
        return quarantined(engine)
    finally:
        engine.dispose()


def test_the_quarantine_holds_exactly_the_old_primarys_tail(story):
    rig = story["rig"]
    divergence = divergence_of(rig.witness(), story["failover_run"])
    source = SqliteChangeSource(rig.settings.database_url("A"))
    try:
        tail = last_images(unapplied_changes(source, divergence.positions, divergence.partitions))
    finally:
        source.close()
    rows = _held_rows(rig)
    assert {(r.table, json.dumps(r.key, sort_keys=True, separators=(",", ":"))) for r in rows} == set(tail)
    assert all(r.position > divergence.positions[partition_of(tail[(r.table, json.dumps(
        r.key, sort_keys=True, separators=(",", ":")))], divergence.partitions)] for r in rows)
    assert _head(rig, "A") == story["a_head"], "moving rows aside and applying B's stream captured nothing on A"
    check_quarantine_names_what_the_failover_lost(story)


def check_quarantine_names_what_the_failover_lost(story) -> None:
    rig = story["rig"]
    rows = _held_rows(rig)
    assert rows and all(r.epoch == 1 for r in rows), "A's rows carry the epoch A wrote under"
    quarantined_numbers = {r.declaration_number[:11] for r in rows if r.declaration_number}
    lost_by_ledger = {n[:11] for n in story["acknowledged_by_a"] if n not in story["on_b_at_failover"]}
    assert lost_by_ledger <= quarantined_numbers, "every declaration A acknowledged that B lacked was moved aside"
    mine = {story["conflict"][:11], story["kept"][:11], story["lost"]["number"][:11]}
    assert mine <= quarantined_numbers
    report = step_result(rig.witness().entries(story["failover_run"]), "report")
    if report.get("exact"):
        assert {d["number"][:11] for d in report["lost"]} == quarantined_numbers, \
            "the failover's RPO list and the quarantine name the same declarations"


def test_the_old_primary_is_a_standby_of_the_new_one_and_verify_is_clean(story):
    check_standby_of_the_new_primary(story)


def check_standby_of_the_new_primary(story) -> None:
    rig = story["rig"]
    control = rig.control("A")
    assert (control.role, control.intake_state, control.primary_site) == (SiteRole.STANDBY, IntakeState.FENCED, "B")
    assert "B-to-A" in running_replicators(rig.tmp)
    rig.wait_caught_up("B", "A")
    report = rig.verify("B", "A")
    assert report.ok, "\n".join(report.summary())


def test_reconcile_brings_back_every_lost_declaration_that_did_not_change_and_lists_the_conflict(story):
    check_reconciled(story)


def check_reconciled(story) -> None:
    rig, client, declarant = story["rig"], story["client"], story["declarant"]
    conflict, kept, lost = story["conflict"], story["kept"], story["lost"]["number"]
    result = step_result(rig.witness().entries(story["failback_run"]), "reconcile")
    listed = {c["number"] for c in result["conflicts"]}
    assert conflict in listed and kept not in listed and lost not in listed
    assert "after the failover" in next(c["reason"] for c in result["conflicts"] if c["number"] == conflict)
    for number, state in ((kept, story["registered_on_a"][kept]["state"]), (lost, "pre_declared")):
        answer = get(client, f"/v1/declarations/{number}", declarant)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["number"], answer.json()["state"]) == (number, state)
    stored = rig.stored("B")
    missing = [n for n in story["ledger"].acknowledged if n not in stored and n not in listed]
    assert missing == [], f"acknowledged declarations missing from the primary and not listed: {missing[:5]}"
    statuses = {r.status for r in _held_rows(rig) if r.declaration_number}
    assert QuarantineStatus.HELD not in statuses


def test_a_client_retrying_an_old_request_through_the_front_gets_its_original_answer(story):
    check_retry_answered_as_before(story)


def check_retry_answered_as_before(story) -> None:
    again = post(story["client"], "/v1/declarations", story["declarant"], story["lost_body"], key="lost-request-1")
    assert again.status_code == 201, again.text
    assert again.json()["number"] == story["lost"]["number"]


def test_every_reconcile_decision_is_audited_and_numbers_are_never_reissued(story):
    check_audited_and_block_raised(story)


def check_audited_and_block_raised(story) -> None:
    rig = story["rig"]
    records = [a for a in rig.witness().audit_records(2000) if a.action == "failback.reconcile"]
    assert all(a.operator == "test-operator" for a in records)
    outcome = {a.target: a.outcome for a in records}
    assert outcome[story["conflict"]] == "conflict" and outcome[story["kept"]] == "reapplied"
    assert outcome[story["lost"]["number"]] == "reapplied"
    result = step_result(rig.witness().entries(story["failback_run"]), "reconcile")
    assert len({a.target for a in records} - {"number_blocks/1"}) == result["reapplied_count"] + \
        result["conflict_count"]
    highest = max(int(r.declaration_number[1:11]) for r in _held_rows(rig)
                  if r.declaration_number and r.declaration_number[0] == "1")
    engine = rig.engine("B")
    with engine.connect() as conn:
        block = conn.execute(number_blocks.select().where(number_blocks.c.site_digit == 1)).mappings().one()
    engine.dispose()
    assert block["next_sequence"] > highest, "A's numbers are never issued again after a switchover back"


def test_running_the_failback_again_changes_nothing(story):
    check_failback_again_changes_nothing(story)


def check_failback_again_changes_nothing(story) -> None:
    rig = story["rig"]
    before = [(r.id, r.status, r.decision) for r in _held_rows(rig)]
    again = run_book(rig, "failback", site="A", primary="B")
    assert again.exit_code == 0, again.output
    entries = rig.witness().entries(last_run(rig, "failback").run_id)
    assert step_result(entries, "quarantine")["moved"] == 0
    assert step_result(entries, "reconcile")["reapplied_count"] == 0
    assert [(r.id, r.status, r.decision) for r in _held_rows(rig)] == before
    assert set(running_replicators(rig.tmp)) == {"B-to-A"}
    report = rig.verify("B", "A")
    assert report.ok, "\n".join(report.summary())


def test_after_the_failback_a_switchover_makes_the_old_primary_primary_again_without_reissuing_a_number(story, tariff):
    rig, client, declarant = story["rig"], story["client"], story["declarant"]
    site = build_site(rig.settings, "A")  # A's HTTP comes back (the switchover checks it answers)
    site.services.tokens = rig.tokens
    http = rig.settings.site("A").http
    rig.served["A"] = (site, BackgroundServer(site.app, http.host, http.port).start())
    back = run_book(rig, "switchover", **{"from": "B", "to": "A"})
    assert back.exit_code == 0, back.output
    assert (rig.witness().state().primary_site, rig.control("A").role) == ("A", SiteRole.PRIMARY)
    fresh = post(client, "/v1/declarations", declarant, payload(tariff, rig.tax_codes()[50]))
    assert fresh.status_code == 201, fresh.text
    quarantined_sequences = {int(r.declaration_number[1:11]) for r in _held_rows(rig)
                             if r.declaration_number and r.declaration_number[0] == "1"}
    number = fresh.json()["number"]
    assert number[0] == "1" and int(number[1:11]) > max(quarantined_sequences)
    rig.wait_caught_up("A", "B")
    report = rig.verify("A", "B")
    assert report.ok, "\n".join(report.summary())
