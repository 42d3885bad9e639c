"""kill -9 of the operator's `standbyctl runbook run failback` right after the intent of each of its steps in turn,
then `standbyctl runbook resume RUN_ID`: the interrupted failback reaches the end state of an uninterrupted one.

The story is tests/integration/test_failback.py's (A primary under traffic through the front, a tail B never gets,
A's serving stopped, the failover runbook to B, B changing one of A's lost declarations), except that its one
failback run is killed seven times: first `runbook run` dies right after the intent of `fence_old` is journaled,
then each `runbook resume` carries out the step that was interrupted and dies right after the next step's intent
(the switchover fault test's copy of the real CLI, SIGKILL to its whole process group), and a last resume finishes
it. Then every check of the uninterrupted story holds: the quarantine names what the failover lost, A is a standby
of B and verify is clean, every lost declaration that did not change on B is back under its number and the conflict
listed, an old request retried through the front is answered as before, every decision is audited, and a second
failback changes nothing."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest
import ray

from tests.fault.test_switchover_resume import _start, _wait_dead, run_killed_after_intent
from tests.integration import test_failback as story_of
from tests.integration.switchover_rig import build_rig

pytestmark = [pytest.mark.fault, pytest.mark.ray, pytest.mark.timeout(900)]

STEPS = ("fence_old", "quarantine", "reverse_stream", "replicate", "verify", "reconcile", "report")


@dataclass
class Finished:
    """What the story expects of a failback run: an exit code and its output."""

    exit_code: int
    output: str


def _cli(rig, *args: str) -> list[str]:
    return ["--config", str(rig.config), "runbook", *args, "--yes", "--operator", "test-operator",
            "--metrics-port", "0"]


def _killed_at_every_step(rig) -> Finished:
    run_id = run_killed_after_intent(rig, _cli(rig, "run", "failback", "--param", "site=A", "--param", "primary=B"),
                                     STEPS[0])
    for step in STEPS[1:]:  # each resume carries out the interrupted step, then dies after the next one's intent
        run_killed_after_intent(rig, _cli(rig, "resume", run_id), step, run_id=run_id)
    log = rig.tmp / "failback-resume.log"
    code = _wait_dead(_start([sys.executable, "-m", "standbyctl.cli", *_cli(rig, "resume", run_id)], log))
    return Finished(code, log.read_text()[-3000:])


@pytest.fixture(scope="module")
def story(tmp_path_factory, org, tariff, ray_session):
    rig = build_rig(tmp_path_factory.mktemp("failback-resume"), org, enterprises_count=300,
                    ray_address=ray.get_runtime_context().gcs_address)
    try:
        yield story_of.tell(rig, tariff, fail_back=_killed_at_every_step)
    finally:
        rig.close()


def test_a_failback_killed_at_every_step_and_resumed_ends_as_an_uninterrupted_one(story):
    story_of.check_quarantine_names_what_the_failover_lost(story)
    story_of.check_standby_of_the_new_primary(story)
    story_of.check_reconciled(story)
    story_of.check_retry_answered_as_before(story)
    story_of.check_audited_and_block_raised(story)
    story_of.check_failback_again_changes_nothing(story)
