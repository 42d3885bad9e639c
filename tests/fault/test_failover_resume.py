"""kill -9 of the operator's `standbyctl runbook run failover` at every step, then `standbyctl runbook resume RUN_ID`:
each interrupted failover reaches the end state of an uninterrupted one, and its report is the same list.

The rig (tests/integration/switchover_rig.py) is two served sites on SQLite, a witness and the front. Every iteration
is a real failover, alternating A → B and B → A: declarants write a short tail through the front to the primary
while nothing replicates it to the standby (the first time the replicator A → B is paused (SIGSTOP) and the failover's
stop_stream kills it; later the test records the standby's positions of the stream at the primary's current head, the
way a stream that had caught up left them), then `runbook run failover` dies by SIGKILL right after the intent of one
step is journaled (the switchover fault test's copy of the real CLI), and `runbook resume` finishes it. The sites keep
no lease here (served in this process without a keeper), so the old primary counts as fenced at once; lease expiry is
test_failover.py's subject. After each resume: exit 0, the run DONE, the witness names the standby primary at epoch
+ 1, it is an OPEN primary at that epoch, the old primary's control row is fenced, and the run's report is exact and
lists exactly the tail's numbers (with enterprise, office, kind and the client's 201), the same as a report computed
afresh."""
from __future__ import annotations

import sys
import time

import pytest

from cutover.actions.failover_journal import divergence_of, step_result
from cutover.rpo import compute_report
from cutover.runbook.plan import RunStatus
from replication.sources import stream_name
from replication.streams import prepare_stream
from standby.domain.states import IntakeState, SiteRole
from tests.fault.test_switchover_resume import _start, _wait_dead, run_killed_after_intent
from tests.integration.switchover_rig import Traffic, build_rig, pause_replicators, running_replicators

pytestmark = [pytest.mark.fault, pytest.mark.ray, pytest.mark.timeout(900)]

STEPS = ("stop_stream", "bump_epoch", "promote", "reverse_start", "resume", "fence_old", "report")


@pytest.fixture
def rig(tmp_path, org, ray_session):
    import ray

    rig = build_rig(tmp_path, org, enterprises_count=300, ray_address=ray.get_runtime_context().gcs_address)
    yield rig
    rig.close()


def _cli(rig, *args: str) -> list[str]:
    return ["--config", str(rig.config), "runbook", *args, "--yes", "--operator", "fault-test", "--metrics-port", "0"]


def _write_tail(rig, tariff, iteration: int) -> dict[str, dict]:
    """A few declarations through the front that the standby never gets; the ledger of what clients were told.
    Traffic's idempotency keys restart at sw-0-0 each time, and a site that kept an earlier tail would answer a
    repeated (declarant, key) with its stored answer: each iteration rotates the declarants, so no pair repeats."""
    codes = rig.tax_codes()
    codes = codes[iteration * 7:] + codes[:iteration * 7]
    traffic = Traffic(rig.front_url, rig.tokens, codes, tariff, clients=2, pause_s=0.05).start()
    time.sleep(0.6)
    ledger = traffic.stop()
    assert ledger.errors == [] and ledger.acknowledged, ledger.errors[:3]
    return ledger.acknowledged


def _killed_on_boundary(rig, source: str, target: str, step: str) -> str:
    return run_killed_after_intent(rig, _cli(rig, "run", "failover", "--param", f"from={source}",
                                             "--param", f"to={target}"), step)


def _resume(rig, run_id: str) -> None:
    log = rig.tmp / "resume.log"
    proc = _start([sys.executable, "-m", "standbyctl.cli", *_cli(rig, "resume", run_id)], log)
    assert _wait_dead(proc) == 0, log.read_text()[-3000:]


def _assert_failed_over(rig, run_id: str, source: str, target: str, epoch: int, tail: dict[str, dict]) -> None:
    witness = rig.witness()
    try:
        state, run, entries = witness.state(), witness.run(run_id), witness.entries(run_id)
        divergence = divergence_of(witness, run_id)
    finally:
        witness.close()
    assert run.status == RunStatus.DONE.value
    assert (state.primary_site, state.epoch) == (target, epoch)
    new, old = rig.control(target), rig.control(source)
    assert (new.role, new.intake_state, new.epoch) == (SiteRole.PRIMARY, IntakeState.OPEN, epoch)
    assert (old.role, old.intake_state, old.fenced_epoch) == (SiteRole.STANDBY, IntakeState.FENCED, epoch)
    assert (divergence.epoch, divergence.reverse_stream) == (epoch, stream_name(target, source))
    report = step_result(entries, "report")
    assert report["exact"] and sorted(d["number"] for d in report["lost"]) == sorted(tail), report
    for lost in report["lost"]:
        told = tail[lost["number"]]
        assert (lost["enterprise_tax_code"], lost["office_code"], lost["kind"]) == (
            told["enterprise_tax_code"], told["office_code"], told["kind"])
        assert (lost["told"]["status"], lost["told"]["key"]) == (201, told["key"])
    sites = rig.sites()
    try:
        again = compute_report(sites.database_url(source), sites.engine(target, writer=False), divergence,
                               step_result(entries, "stop_stream"))
    finally:
        sites.close()
    assert again == report, "the journaled report is the one computed afresh"


def test_kill_9_of_the_failover_at_every_step_then_resume_reaches_the_same_end_state(rig, tariff):
    primary, standby, epoch = "A", "B", 1
    pause_replicators(rig, "A-to-B")  # stop_stream kills it, paused or not
    for iteration, step in enumerate(STEPS):
        if epoch > 1:  # the standby's positions at the primary's head: everything before is applied
            prepare_stream(rig.settings.database_url(primary), rig.settings.database_url(standby),
                           stream_name(primary, standby), 2, replace=True)
        tail = _write_tail(rig, tariff, iteration)
        run_id = _killed_on_boundary(rig, primary, standby, step)
        _resume(rig, run_id)
        epoch += 1
        _assert_failed_over(rig, run_id, primary, standby, epoch, tail)
        assert running_replicators(rig.tmp) == {}, "stop_stream killed the replicator; nothing restarted one"
        primary, standby = standby, primary
