"""kill -9 of the operator's `standbyctl runbook run switchover` at every step, then `standbyctl runbook resume RUN_ID`:
each interrupted switchover reaches the end state of an uninterrupted one, with declarants writing through the front
the whole time and nothing lost, doubled or refused.

The rig (tests/integration/switchover_rig.py) is two served sites on SQLite, a witness, the front and a replicator
process. Every iteration is a real switchover, alternating A → B and B → A, killed once:
- on the boundary of each step in turn: the CLI's whole process group is SIGKILLed right after the step's intent
  is journaled in the witness, before the step acts (a copy of the real CLI whose only change is that kill in
  Executor._append: a kill from outside could land there only by luck, the fast steps take milliseconds);
- mid-step, from outside, on the real `python -m standbyctl.cli`: while `replicate_back` waits for the replicator it
  has just spawned (that process outlives the kill, and the resumed run must not start a second one). It is the one
  step slow enough everywhere (a process joining Ray) for an outside kill to land inside it; postcheck's verify of
  this small population takes well under the 0.2 s the kill waits on a quiet machine.
After each kill `standbyctl runbook resume RUN_ID` exits 0 and: the witness names the target primary at epoch + 1,
the run is done (its postcheck's verify found the sites equal), the target is an OPEN primary at that epoch, the
source a FENCED standby of it, and exactly one replicator process runs, target → source. At the end: no client saw
an error, every acknowledged number is on the final primary exactly once, and verify finds the sites equal."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cutover.runbook.plan import RunStatus
from standby.domain.states import IntakeState, SiteRole
from tests.conftest import REPO
from tests.integration.switchover_rig import (Traffic, build_rig, ledger_problems, replicator_processes,
                                              running_replicators)

# Ten switchovers, each with a CLI start, a kill and a resume: minutes on a shared 2-core machine.
pytestmark = [pytest.mark.fault, pytest.mark.ray, pytest.mark.timeout(1800)]

STEPS = ("freeze", "catch_up", "bump_epoch", "promote", "reverse_stream", "resume", "replicate_back", "postcheck")
# Writes wait while the runbook's process is dead (held at the frozen site, or at the front while the witness names
# a primary that is not open yet) until the resume gets there; a resume on a loaded machine may take tens of seconds,
# so the site and the front hold them for up to two minutes (an operator's resume may take longer: clients then get
# 503 with Retry-After, which this test would count as errors). The freeze budget is generous too: the estimate
# comes from the replication lag, which is timing on a shared machine.
HOLD_S = 120
PARAMS = ("--param", f"hold_s={HOLD_S}", "--param", "catch_up_timeout_s=30", "--param", "freeze_budget_s=5",
          "--param", "max_lag_s=5")

DYING_CLI = '''\
"""The real standbyctl CLI, with one change: right after the intent of step $DIE_AFTER_INTENT_OF is journaled, the
process group is sent SIGKILL (this process; the replicators it starts run in sessions of their own)."""
import os, signal, sys
sys.path.insert(0, {repo!r})
from cutover.runbook.executor import Executor
from standbyctl.cli import main

STEP = os.environ["DIE_AFTER_INTENT_OF"]
_append = Executor._append


def append(self, run_id, step, phase, detail):
    seq = _append(self, run_id, step, phase, detail)
    if step == STEP and phase == "intent":
        os.killpg(0, signal.SIGKILL)
    return seq


Executor._append = append
main(sys.argv[1:], prog_name="standbyctl")
'''


@pytest.fixture
def rig(tmp_path, org, ray_session):
    import ray

    # The replicators each switchover starts join the session's Ray rather than start one of their own (seconds each).
    rig = build_rig(tmp_path, org, enterprises_count=300, ray_address=ray.get_runtime_context().gcs_address,
                    front_hold_s=HOLD_S)
    yield rig
    rig.close()


def _cli(rig, *args: str) -> list[str]:
    return ["--config", str(rig.config), "runbook", *args, "--yes", "--operator", "fault-test", "--metrics-port", "0"]


def _run_args(rig, source: str, target: str) -> list[str]:
    return _cli(rig, "run", "switchover", "--param", f"from={source}", "--param", f"to={target}", *PARAMS)


def _start(argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """A CLI process in a session (so a process group) of its own, logging to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})


def _current_run(witness, known: set[str]):
    """The run started since `known` was taken, once it exists."""
    runs = [r for r in witness.runs(5) if r.run_id not in known]
    return runs[0] if runs else None


def _journal(rig, run_id: str) -> list[tuple[str, str]]:
    witness = rig.witness()
    try:
        return [(e.step, e.phase) for e in witness.entries(run_id)]
    finally:
        witness.close()


def _run_ids(rig) -> set[str]:
    witness = rig.witness()
    try:
        return {r.run_id for r in witness.runs(100)}
    finally:
        witness.close()


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_dead(proc: subprocess.Popen, timeout_s: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    finally:
        _kill_group(proc)  # only when the wait itself failed (timeout, interrupt): a process never outlives the test


def run_killed_after_intent(rig, cli_args: list[str], step: str, run_id: str | None = None) -> str:
    """The CLI copy that dies right after `step`'s intent is journaled, run with `cli_args`: a `runbook run` (the run
    it started is found and returned) or a `runbook resume` of `run_id` (returned)."""
    known = _run_ids(rig)
    script = rig.tmp / "dying_cli.py"
    script.write_text(DYING_CLI.format(repo=str(REPO)))
    proc = _start([sys.executable, str(script), *cli_args], rig.tmp / "runbook.log", env={"DIE_AFTER_INTENT_OF": step})
    assert _wait_dead(proc) == -signal.SIGKILL, (rig.tmp / "runbook.log").read_text()[-3000:]
    if run_id is None:
        witness = rig.witness()
        try:
            run = _current_run(witness, known)
        finally:
            witness.close()
        assert run is not None
        run_id = run.run_id
    assert _journal(rig, run_id)[-1] == (step, "intent"), "killed right after the step's intent, before it acted"
    return run_id


def _killed_on_boundary(rig, source: str, target: str, step: str) -> str:
    """`runbook run` that dies right after step's intent is journaled; returns the run's id."""
    return run_killed_after_intent(rig, _run_args(rig, source, target), step)


def _killed_mid_step(rig, source: str, target: str, step: str) -> str:
    """The real `python -m standbyctl.cli runbook run`, its process group SIGKILLed from outside while `step` is in
    flight (its intent journaled, no outcome yet): a step that takes seconds (a replicator starting, a verify)."""
    known = _run_ids(rig)
    proc = _start([sys.executable, "-m", "standbyctl.cli", *_run_args(rig, source, target)], rig.tmp / "runbook.log")
    witness = rig.witness()
    try:
        deadline = time.monotonic() + 240
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, \
                (rig.tmp / "runbook.log").read_text()[-3000:]
            run = _current_run(witness, known)
            if run and (step, "intent") in [(e.step, e.phase) for e in witness.entries(run.run_id)]:
                time.sleep(0.2)  # inside the step, which takes seconds
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait()
    finally:
        _kill_group(proc)
        witness.close()
    assert _journal(rig, run.run_id)[-1] == (step, "intent"), "killed while the step was in flight"
    return run.run_id


def _resume(rig, run_id: str) -> None:
    log = rig.tmp / "resume.log"
    proc = _start([sys.executable, "-m", "standbyctl.cli", *_cli(rig, "resume", run_id)], log)
    assert _wait_dead(proc) == 0, log.read_text()[-3000:]


def _assert_switched(rig, run_id: str, source: str, target: str, epoch: int) -> None:
    """The end state of an uninterrupted switchover source → target."""
    witness = rig.witness()
    try:
        state, run = witness.state(), witness.run(run_id)
        postcheck = [e for e in witness.entries(run_id) if e.step == "postcheck" and e.phase == "done"]
    finally:
        witness.close()
    assert run.status == RunStatus.DONE.value
    assert (state.primary_site, state.epoch) == (target, epoch)
    new, old = rig.control(target), rig.control(source)
    assert (new.role, new.intake_state, new.epoch) == (SiteRole.PRIMARY, IntakeState.OPEN, epoch)
    assert (old.role, old.intake_state, old.primary_site) == (SiteRole.STANDBY, IntakeState.FENCED, target)
    # The run's own postcheck ran verify (target against source) and found them equal; the test verifies the
    # final state itself at the end, since a verify costs seconds on this machine.
    assert len(postcheck) == 1 and postcheck[0].detail["result"]["rows"] > 0
    reverse = f"{target}-to-{source}"
    deadline = time.monotonic() + 60  # the old stream's process ends by itself once everything is applied
    while [s for s, _ in replicator_processes(rig.config)] != [reverse] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [s for s, _ in replicator_processes(rig.config)] == [reverse], \
        "exactly one replicator process, new primary → old"


def _assert_an_unrecorded_replicator_is_adopted(rig) -> None:
    """A run killed after spawning the replicator and before writing its pid file: the resumed run finds the
    process by its command line and keeps it instead of starting a second."""
    [(stream, pid)] = replicator_processes(rig.config)
    (rig.tmp / f"replicate-{stream}.pid").unlink()
    sites = rig.sites()
    try:
        assert sites.start_replicator("A", "B") == pid
    finally:
        sites.close()
    assert replicator_processes(rig.config) == [(stream, pid)]
    assert running_replicators(rig.tmp) == {stream: pid}


KILLS = [(step, "boundary") for step in STEPS] + [("replicate_back", "mid-step")]


def test_kill_9_of_the_switchover_at_every_step_then_resume_reaches_the_same_end_state(rig, tariff):
    _assert_an_unrecorded_replicator_is_adopted(rig)
    # Light traffic: every verify (three a switchover, under a 30 s precondition bound) compares what it wrote.
    traffic = Traffic(rig.front_url, rig.tokens, rig.tax_codes(), tariff, clients=2, pause_s=0.2).start()
    primary, standby, epoch = "A", "B", 1
    try:
        time.sleep(0.5)
        for step, where in KILLS:
            if where == "boundary":
                run_id = _killed_on_boundary(rig, primary, standby, step)
            else:
                run_id = _killed_mid_step(rig, primary, standby, step)
            _resume(rig, run_id)
            epoch += 1
            _assert_switched(rig, run_id, primary, standby, epoch)
            primary, standby = standby, primary
    finally:
        ledger = traffic.stop()
    assert ledger.errors == [], f"clients saw errors through the front: {ledger.errors[:5]}"
    assert {number[0] for number in ledger.acknowledged} == {"1", "2"}, "both sites took writes"
    rig.wait_caught_up(primary, standby)
    assert ledger_problems(ledger, rig.stored(primary)) == []
    report = rig.verify(primary, standby)
    assert report.ok, "\n".join(report.summary())
