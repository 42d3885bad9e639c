"""The switchover runbook end to end on the embedded default: two served sites, a witness, the front and a
replicator process, with declarants writing through the front the whole time. A → B and back again: nothing
acknowledged is lost or doubled, no client sees an error, and verify finds the sites equal after each switch."""
from __future__ import annotations

import os
import random
import signal
import time

import httpx

import pytest
from click.testing import CliRunner

from cutover.runbook.executor import Executor
from standby.domain.states import IntakeState, Kind, SiteRole
from standby.synthetic import make_declaration_payload
from standbyctl.cli import main
from tests.integration.switchover_rig import Traffic, build_rig, pause_replicators, running_replicators

pytestmark = pytest.mark.ray


def switch(rig, source: str, target: str, *extra: str):
    return CliRunner().invoke(main, ["--config", str(rig.config), "runbook", "run", "switchover",
                                     "--param", f"from={source}", "--param", f"to={target}", "--yes",
                                     "--operator", "test-operator", "--metrics-port", "0", *extra])


@pytest.fixture(scope="module")
def rig(tmp_path_factory, org, ray_session):
    """One rig for the module (building one costs seconds): every test leaves A the primary, as it found it. The
    replicator processes the switchovers start join the session's Ray instead of each starting a local one."""
    import ray

    rig = build_rig(tmp_path_factory.mktemp("switchover"), org, ray_address=ray.get_runtime_context().gcs_address)
    yield rig
    rig.close()


def _assert_switched(rig, primary: str, old: str, epoch: int) -> None:
    state = rig.witness().state()
    assert (state.primary_site, state.epoch) == (primary, epoch)
    new, fenced = rig.control(primary), rig.control(old)
    assert (new.role, new.intake_state, new.epoch) == (SiteRole.PRIMARY, IntakeState.OPEN, epoch)
    assert (fenced.role, fenced.intake_state, fenced.primary_site) == (SiteRole.STANDBY, IntakeState.FENCED, primary)


def test_switchover_and_back_under_load_loses_doubles_and_refuses_nothing(rig, tariff):
    epoch = rig.witness().state().epoch
    traffic = Traffic(rig.front_url, rig.tokens, rig.tax_codes(), tariff).start()
    try:
        time.sleep(1.0)
        there = switch(rig, "A", "B")
        assert there.exit_code == 0, there.output
        _assert_switched(rig, "B", "A", epoch=epoch + 1)
        time.sleep(1.0)  # B takes writes on its own for a while, replicated back to A
        back = switch(rig, "B", "A")
        assert back.exit_code == 0, back.output
        _assert_switched(rig, "A", "B", epoch=epoch + 2)
        time.sleep(0.5)
    finally:
        ledger = traffic.stop()
    assert ledger.errors == [], f"clients saw errors through the front: {ledger.errors[:5]}"
    assert len(ledger.acknowledged) > 50
    digits = {number[0] for number in ledger.acknowledged}
    assert digits == {"1", "2"}, "both sites took writes (numbers start with the issuing site's digit)"
    rig.wait_caught_up("A", "B")
    stored = rig.stored("A")
    for number, told in ledger.acknowledged.items():
        row = stored.get(number)
        assert row is not None, f"{number} was acknowledged but is not on the final primary"
        assert (row["enterprise_tax_code"], row["office_code"], row["kind"]) == (
            told["enterprise_tax_code"], told["office_code"], told["kind"]), number
    report = rig.verify("A", "B")
    assert report.ok, "\n".join(report.summary())
    assert set(running_replicators(rig.tmp)) == {"A-to-B"}, "only the stream from the current primary runs"


def test_a_freeze_over_budget_is_refused_before_anything_is_frozen(rig):
    epoch = rig.witness().state().epoch
    result = switch(rig, "A", "B", "--param", "freeze_budget_s=0.001")
    assert result.exit_code != 0
    assert "budget" in result.output and "Traceback" not in result.output
    assert rig.control("A").intake_state is IntakeState.OPEN
    assert rig.witness().state().epoch == epoch


def _pause_replication_then_write_at_freeze(monkeypatch, rig, tariff, written: list) -> None:
    """Right after the run journals its freeze intent (the preconditions passed, nothing frozen yet), SIGSTOP the
    replicator A → B and commit one declaration straight on A: A then has a commit B cannot apply, whatever the
    timing of the traffic, so the catch-up must time out and the run roll back."""
    original = Executor._append

    def append(self, run_id, step, phase, detail):
        seq = original(self, run_id, step, phase, detail)
        if step == "freeze" and phase == "intent" and not written:
            pause_replicators(rig)
            tax_code = rig.tax_codes()[0]
            body = make_declaration_payload(random.Random(1), Kind.IMPORT, tax_code, "01CA", tariff)
            reply = httpx.post(f"{rig.site_url('A')}/v1/declarations", json=body, timeout=30, headers={
                "Authorization": f"Bearer {rig.tokens.declarant(tax_code)}", "Idempotency-Key": "unreplicated-1"})
            written.append(reply)
        return seq

    monkeypatch.setattr(Executor, "_append", append)


def test_a_standby_that_does_not_catch_up_rolls_back_to_the_old_primary(rig, tariff, monkeypatch):
    epoch = rig.witness().state().epoch
    traffic = Traffic(rig.front_url, rig.tokens, rig.tax_codes(), tariff).start()
    written: list = []
    try:
        time.sleep(0.5)
        _pause_replication_then_write_at_freeze(monkeypatch, rig, tariff, written)
        result = switch(rig, "A", "B", "--param", "catch_up_timeout_s=0.5")
    finally:
        for pid in running_replicators(rig.tmp).values():
            os.killpg(pid, signal.SIGCONT)
        ledger = traffic.stop()
    assert [r.status_code for r in written] == [201], "A committed a declaration B could not apply"
    assert result.exit_code == 1, result.output
    assert "rolled back" in result.output.lower(), result.output
    a = rig.control("A")
    assert (a.role, a.intake_state, a.epoch) == (SiteRole.PRIMARY, IntakeState.OPEN, epoch)
    assert rig.witness().state().primary_site == "A"
    assert ledger.errors == [], "clients saw a pause, not errors"
    rig.wait_caught_up("A", "B")
    stored = rig.stored("A")
    assert set(ledger.acknowledged) <= set(stored), "every write held during the freeze was carried out on A"
    assert written[0].json()["number"] in stored
