"""`standbyctl drill --quick`, end to end, as an operator runs it: its own processes (sites, front, replicators,
Locust, the runbooks), the five steps under load, the verdict, and the report opened in headless Chromium.

The drill's SLO verdicts are wall-clock figures, which tests do not judge (the machines are shared and noisy): the
test accepts exit 0 (pass) or 3 (correct, an SLO missed) and asserts everything the drill says about correctness:
every step done, nothing lost or doubled, verify clean, the failover's loss named exactly and reconciled."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser import open_report

pytestmark = [pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
STEPS = ["switchover", "org-restructure", "failover", "failback", "switchback"]


def drill_command(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "standbyctl.cli", "drill", "--quick", "--workdir", str(workdir),
            "--operator", "test-drill", *extra]


@pytest.fixture(scope="module")
def quick_drill(tmp_path_factory):
    # The quick drill's load-only phases (12 s before the first step, 6 s after each) are for its steady-state SLOs,
    # which tests do not judge: 2 s and 1 s leave load running through every step and save ~35 s of the suite.
    workdir = tmp_path_factory.mktemp("drill") / "run"
    done = subprocess.run(drill_command(workdir, "--warmup-s", "2", "--gap-s", "1"), cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    document = json.loads((workdir / "drill.json").read_text()) if (workdir / "drill.json").exists() else None
    return done, document, workdir


def test_the_quick_drill_runs_every_step_and_loses_nothing(quick_drill):
    done, document, workdir = quick_drill
    output = done.stdout + done.stderr
    assert done.returncode in (0, 3), output[-4000:]
    assert [s["id"] for s in document["steps"]] == STEPS
    assert [s["status"] for s in document["steps"]] == ["done"] * 5, output[-4000:]
    assert document["final_verify"] == "clean"
    assert document["final_ledger"]["ok"], document["final_ledger"]["describe"]
    assert document["final_ledger"]["acknowledged"] > 0
    assert document["final_primary"] == "A"
    for step in document["steps"]:
        assert step["ledger_doubled"] == 0 and step["ledger_mismatched"] == 0, step
        if step["id"] != "failover":
            assert step["verify"] == "clean", step


def test_each_step_carries_its_figures(quick_drill):
    _done, document, _workdir = quick_drill
    steps = {s["id"]: s for s in document["steps"]}
    for planned in ("switchover", "org-restructure", "switchback"):
        assert steps[planned]["freeze_s"] is not None and steps[planned]["frozen_at"] is not None
    failover = steps["failover"]
    assert failover["killed_at"] is not None and failover["rto_s"] is not None
    assert failover["rpo_listed_exactly"] is True
    assert failover["verify"].startswith("not run: A is down")
    assert steps["failback"]["rpo_lost_after_reconcile"] == 0 or (
        steps["failback"]["rpo_lost_after_reconcile"] <= (steps["failback"]["conflicts"] or 0))


def test_the_last_line_is_the_verdict_and_the_exit_code_matches_it(quick_drill):
    done, document, _workdir = quick_drill
    last = done.stdout.strip().splitlines()[-1]
    assert last == document["verdict"]["line"]
    assert done.returncode == document["verdict"]["exit_code"]
    assert last.startswith("PASS") if done.returncode == 0 else last.startswith("FAIL (SLO)")
    # the per-step table was printed
    assert "| 3 | Unplanned failover: kill -9 of A, B takes over | done |" in done.stdout


def test_the_drills_runbook_runs_are_its_operators_and_the_failover_is_the_watchs(quick_drill):
    from cutover.witness import open_witness

    _done, _document, workdir = quick_drill
    witness = open_witness(f"sqlite:///{workdir / 'witness.db'}", root=REPO)
    try:
        runs = witness.runs(20)
    finally:
        witness.close()
    assert {r.runbook for r in runs} >= {"switchover", "org-restructure-via-switchover", "failover", "failback"}
    # the failover is automatic (--failover-by watch, the default): B's watch ran it under its own identity
    assert {r.operator for r in runs if r.runbook == "failover"} == {"watch@B"}
    assert {r.operator for r in runs if r.runbook != "failover"} == {"test-drill"}


def test_the_report_renders_in_a_real_browser(quick_drill):
    _done, document, workdir = quick_drill
    page = open_report(workdir / "report.html")
    assert page.images, "the report shows no image"
    assert all(width > 0 for _src, width in page.images), page.images
    assert [row[1] for row in page.steps] == [s["title"] for s in document["steps"]]
    assert document["verdict"]["line"] in page.verdict


@pytest.mark.fault
def test_sigterm_finishes_the_step_in_hand_and_writes_the_report_so_far(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(drill_command(workdir, "--enterprises", "500", "--warmup-s", "2"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            record = _read(workdir / "drill.json")
            if record and record["steps"][0]["status"] == "running":
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the drill ended before its first step"
        os.kill(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    document = json.loads((workdir / "drill.json").read_text())
    assert proc.returncode == 130, output[-3000:]
    assert [s["status"] for s in document["steps"]] == ["done", "skipped", "skipped", "skipped", "skipped"]
    assert document["final_verify"] == "clean" and document["final_ledger"]["ok"]
    assert output.strip().splitlines()[-1].startswith("STOPPED by the operator")
    assert (workdir / "report.html").exists()
    leftovers = subprocess.run(["pgrep", "-f", f"--config {workdir}"], capture_output=True, text=True).stdout
    assert leftovers == "", f"processes of the drill still running: {leftovers}"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
