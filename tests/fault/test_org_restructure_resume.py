"""kill -9 of the operator's `standbyctl runbook run org-restructure` right after the intent of each of its steps in
turn, then `standbyctl runbook resume RUN_ID`, under declarant traffic through the front: the interrupted run ends as
an uninterrupted one (A and B on the new map, every live record moved once, intake open on A, verify clean, nothing
acknowledged lost or doubled). First `runbook run` dies right after the intent of `prepare`; each `runbook resume`
carries out the interrupted step and dies right after the next step's intent; a last resume finishes the run."""
from __future__ import annotations

import sys
import time

import pytest
import ray

from standby.domain.states import IntakeState
from tests.fault.test_switchover_resume import _start, _wait_dead, run_killed_after_intent
from tests.integration.switchover_rig import Traffic, build_rig, ledger_problems
from standby.store.schema import enterprises
from tests.integration.test_org_restructure import LEGACY, NEW, OPEN, snapshot

pytestmark = [pytest.mark.fault, pytest.mark.ray, pytest.mark.timeout(900)]

STEPS = ("prepare", "freeze", "switch", "resume", "standby_follows", "postcheck")


def _cli(rig, *args: str) -> list[str]:
    return ["--config", str(rig.config), "runbook", *args, "--yes", "--operator", "test-operator",
            "--metrics-port", "0"]


@pytest.fixture(scope="module")
def story(tmp_path_factory, org, tariff, ray_session):
    rig = build_rig(tmp_path_factory.mktemp("org-resume"), org, enterprises_count=300,
                    ray_address=ray.get_runtime_context().gcs_address)
    traffic = Traffic(rig.front_url, rig.tokens, rig.tax_codes()[:40], tariff, clients=3).start()
    try:
        time.sleep(1.0)
        run_id = run_killed_after_intent(rig, _cli(rig, "run", "org-restructure", "--param", "site=A", "--param",
                                                   "standby=B"), STEPS[0])
        for step in STEPS[1:]:  # each resume carries out the interrupted step, then dies after the next one's intent
            run_killed_after_intent(rig, _cli(rig, "resume", run_id), step, run_id=run_id)
        log = rig.tmp / "org-resume.log"
        code = _wait_dead(_start([sys.executable, "-m", "standbyctl.cli", *_cli(rig, "resume", run_id)], log))
        time.sleep(0.5)
        ledger = traffic.stop()
        rig.wait_caught_up("A", "B")
        yield {"rig": rig, "code": code, "log": log.read_text()[-3000:], "ledger": ledger, "a": snapshot(rig, "A"),
               "b": snapshot(rig, "B")}
    finally:
        traffic.stop()
        rig.close()


def test_a_restructure_killed_at_every_step_and_resumed_ends_as_an_uninterrupted_one(story) -> None:
    rig, a, b = story["rig"], story["a"], story["b"]
    assert story["code"] == 0, story["log"]
    assert a["map"].active_version.isoformat() == b["map"].active_version.isoformat() == NEW
    assert rig.control("A").intake_state is IntakeState.OPEN
    columns = [c.name for c in enterprises.columns]
    moved = [dict(zip(columns, row)) for row in a["enterprises"]]
    # every enterprise moved, and once: its previous codes are its legacy ones, not codes of the new map
    assert all(e["address_valid_from"].isoformat() == NEW and e["prev_address_valid_from"].isoformat() == LEGACY
               for e in moved)
    live = [d for d in a["declarations"].values() if d["state"] in OPEN]
    assert live and all(d["declarant_map_version"].isoformat() == NEW for d in live)
    assert ledger_problems(story["ledger"], rig.stored("A")) == [] and story["ledger"].errors == []
    assert rig.verify("A", "B").ok
