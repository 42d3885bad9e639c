"""`standbyctl drill --existing`: the drill of sites someone else runs (the switchover rig's: two `standbyctl serve`
processes, the witness, the front, the replicator A → B). The drill starts only Locust and the runbooks; without
--kill-primary it kills nothing, so the failover, the failback and the switch back are skipped, and said so; its
tokens are revoked at the end; running sites it cannot drill are refused, naming why."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, free_port
from tests.integration.switchover_rig import build_rig

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def rig(tmp_path_factory, org, ray_session):
    import ray

    rig = build_rig(tmp_path_factory.mktemp("drill-existing"), org, enterprises_count=300,
                    serve_as_process=("A", "B"), ray_address=ray.get_runtime_context().gcs_address)
    yield rig
    rig.close()


def drill(config, workdir, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "standbyctl.cli", "--config", str(config), "drill", "--existing",
                           "--quick", "--warmup-s", "2", "--gap-s", "1", "--workdir", str(workdir), "--operator",
                           "night-shift", *extra], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_a_drill_of_running_sites_without_a_kill_command_kills_nothing(rig, tmp_path):
    done = drill(rig.config, tmp_path / "run")
    output = done.stdout + done.stderr
    assert done.returncode in (0, 3), output[-4000:]
    document = json.loads((tmp_path / "run" / "drill.json").read_text())
    assert [s["status"] for s in document["steps"]] == ["done", "done", "skipped", "skipped", "skipped"], output
    notes = [s["note"] for s in document["steps"][2:]]
    assert "no --kill-primary COMMAND" in notes[0] and "no --kill-primary COMMAND" in notes[1]
    assert notes[2] == "not run: A is the primary, not B"
    assert document["final_primary"] == "A" and document["final_verify"] == "clean"
    assert document["final_ledger"]["ok"] and document["final_ledger"]["acknowledged"] > 0
    assert all(proc.poll() is None for proc in rig.processes.values()), "the drill killed a site it did not start"
    assert document["params"]["sites"] == f"running: {rig.config}"


def test_the_runs_are_the_operators_and_the_tokens_are_revoked(rig, tmp_path):
    tokens = yaml.safe_load((rig.tmp / "tokens.yaml").read_text()) or {}
    assert not [t for t in tokens.get("tokens", []) if str(t.get("label", "")).startswith("drill-")]
    witness = rig.witness()
    try:
        runs = witness.runs(10)
    finally:
        witness.close()
    assert {r.runbook for r in runs} >= {"switchover", "org-restructure-via-switchover"}
    assert {r.operator for r in runs if r.runbook.startswith(("switchover", "org-"))} == {"night-shift"}


def test_running_sites_it_cannot_reach_are_refused_naming_what_is_missing(rig, tmp_path):
    raw = yaml.safe_load(rig.config.read_text())
    raw["front"]["port"] = free_port()  # nothing listens there
    config = tmp_path / "no-front.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = drill(config, tmp_path / "run")
    last = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 1, done.stdout + done.stderr
    assert last.startswith("FAIL (the drill broke off): SitesUnfit: the front does not answer at http://")
    assert "start it first" in last
    assert "Traceback" not in done.stdout + done.stderr


def test_kill_commands_belong_to_running_sites_only(tmp_path):
    done = subprocess.run([sys.executable, "-m", "standbyctl.cli", "drill", "--quick", "--workdir",
                           str(tmp_path / "run"), "--kill-primary", "true"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "--kill-primary and --restart-site are for --existing" in done.stderr


def test_with_kill_and_restart_commands_the_operator_fails_over_and_back(rig, tmp_path):
    """The failover, failback and switch back of running sites: the drill kills the primary only with the operator's
    --kill-primary command and brings it back with --restart-site, and with --failover-by operator it runs the
    failover runbook itself once the lease expired (the sites here have no watches)."""
    pids = tmp_path / "pids"
    pids.mkdir()
    for site, proc in rig.processes.items():
        (pids / f"{site}.pid").write_text(str(proc.pid))  # each serve leads its own process group
    kill = f"pkill -KILL -g $(cat {pids}/{{site}}.pid)"  # the serve leads its process group
    restart = (f"cd {REPO} && setsid {sys.executable} -m standbyctl.cli --config {rig.config} serve --site {{site}} "
               f"</dev/null >>{tmp_path}/restarted-{{site}}.log 2>&1 & echo $! > {pids}/{{site}}.pid")
    try:
        done = drill(rig.config, tmp_path / "run", "--failover-by", "operator", "--kill-primary", kill,
                     "--restart-site", restart)
        output = done.stdout + done.stderr
        assert done.returncode in (0, 3), output[-4000:]
        document = json.loads((tmp_path / "run" / "drill.json").read_text())
        steps = {s["id"]: s for s in document["steps"]}
        assert [s["status"] for s in document["steps"]] == ["done"] * 5, output[-4000:]
        assert steps["failover"]["killed_at"] is not None and steps["failover"]["rto_s"] is not None
        assert steps["failover"]["rpo_listed_exactly"] is True
        assert steps["failback"]["verify"] == "clean"
        assert document["final_primary"] == "A" and document["final_verify"] == "clean"
        assert document["final_ledger"]["ok"], document["final_ledger"]["describe"]
        assert rig.processes["A"].poll() is not None, "the kill command did not kill A's serve"
        restarted = int((pids / "A.pid").read_text())
        assert os.path.exists(f"/proc/{restarted}"), "A's restarted serve is not running after the drill"
        witness = rig.witness()
        try:
            runs = [r for r in witness.runs(20) if r.runbook in ("failover", "failback")]
        finally:
            witness.close()
        assert {(r.runbook, r.operator, r.status) for r in runs} == {("failover", "night-shift", "done"),
                                                                     ("failback", "night-shift", "done")}
    finally:
        for pid_file in pids.glob("*.pid"):
            pid = int(pid_file.read_text())
            if pid not in {p.pid for p in rig.processes.values()}:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
