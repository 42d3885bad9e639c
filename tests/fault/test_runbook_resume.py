"""kill -9 of the operator's `standbyctl runbook run` at every step, then `standbyctl runbook resume RUN_ID`: the run
reaches the same end state as an uninterrupted one, and every step's (idempotent) effect happened exactly once.

Two kinds of kill: on every journal boundary (tests/runbooks/crashing_cli.py is the real CLI that SIGKILLs itself
right after the N-th journal entry: after an intent and before the act, after an outcome and before the next
intent), and mid-step from outside (the step's command is blocked half-way; the whole process group is killed,
the command with it)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cutover.runbook.plan import RUN_EVENT
from cutover.witness import open_witness
from standbyctl.cli import main
from tests.conftest import REPO, built_once

pytestmark = pytest.mark.fault

RUNBOOKS = REPO / "tests" / "runbooks"
STANDBYCTL = str(Path(sys.executable).with_name("standbyctl"))
EXPECTED = {  # an uninterrupted run's end: status, ledger, undo log
    "files": ("done", ["one", "two", "three-after-2", "four"], []),
    "rollback": ("rolled_back", ["a"], ["c", "b"]),
}


class Scene:
    """One fresh world: settings, a witness, a folder for the effects."""

    def __init__(self, root: Path, runbook: str):
        self.root, self.runbook, self.fx = root, runbook, root / "fx"
        self.fx.mkdir(parents=True)
        # The witness ready at its schema's head, as after a first run: otherwise each killed CLI process would
        # import Alembic and migrate a new witness first (~0.9 s of its ~1.5 s).
        shutil.copyfile(built_once(("witness",), lambda url: open_witness(url).close()), root / "witness.db")
        self.config = root / "standby.yaml"
        self.config.write_text(yaml.safe_dump({
            "root": str(root), "witness_url": f"sqlite:///{root / 'witness.db'}",
            "sites": {"A": {"site_digit": 1, "database_url": f"sqlite:///{root / 'a.db'}"},
                      "B": {"site_digit": 2, "database_url": f"sqlite:///{root / 'b.db'}"}}}))

    def run_args(self) -> list[str]:
        return ["--config", str(self.config), "runbook", "run", str(RUNBOOKS / f"{self.runbook}.yaml"),
                "--operator", "alice", "--yes", "--metrics-port", "0", "--param", f"dir={self.fx}",
                "--param", f"python={sys.executable}", "--param", f"script={RUNBOOKS / 'effect.py'}"]

    def resume_args(self, run_id: str) -> list[str]:
        return ["--config", str(self.config), "runbook", "resume", run_id, "--operator", "bob", "--yes",
                "--metrics-port", "0"]

    def journal(self):
        w = open_witness(f"sqlite:///{self.root / 'witness.db'}")
        try:
            runs = w.runs(5)
            assert len(runs) == 1, runs
            return runs[0], w.entries(runs[0].run_id)
        finally:
            w.close()

    def lines(self, name: str) -> list[str]:
        path = self.fx / name
        return path.read_text().splitlines() if path.exists() else []


def assert_same_end_state(scene: Scene, where: str) -> list:
    status, ledger, undone = EXPECTED[scene.runbook]
    run, entries = scene.journal()
    assert run.status == status, where
    assert scene.lines("ledger.log") == ledger, where  # each effect exactly once, in order
    assert scene.lines("undo.log") == undone, where
    steps = [e for e in entries if e.step != RUN_EVENT]
    for sid in {e.step for e in steps}:
        assert [e.phase for e in steps if e.step == sid].count("done") <= 1, (where, sid)
    return entries


def boundary_count(tmp_path: Path, runbook: str) -> int:
    """How many journal entries an uninterrupted run writes (the kill points)."""
    scene = Scene(tmp_path / "reference", runbook)
    result = CliRunner().invoke(main, scene.run_args())
    assert result.exit_code == (0 if runbook == "files" else 1), result.output
    return len(assert_same_end_state(scene, "uninterrupted"))


@pytest.mark.parametrize("runbook", ["files", "rollback"])
def test_kill_at_every_journal_boundary_then_resume_reaches_the_same_end_state(tmp_path, runbook):
    total = boundary_count(tmp_path, runbook)
    assert total >= 13
    reruns = 0
    for n in range(1, total + 1):
        scene = Scene(tmp_path / f"kill-{n}", runbook)
        killed = subprocess.run([sys.executable, str(RUNBOOKS / "crashing_cli.py"), str(n)] + scene.run_args(),
                                capture_output=True, text=True, timeout=120)
        assert killed.returncode == -signal.SIGKILL, (n, killed.stdout[-2000:], killed.stderr[-2000:])
        run, before = scene.journal()
        assert len(before) == n and run.status in ("running", "rolling_back"), n
        last = before[-1]
        resumed = CliRunner().invoke(main, scene.resume_args(run.run_id))
        assert resumed.exit_code == (0 if runbook == "files" else 1), (n, resumed.output)
        assert_same_end_state(scene, f"killed after entry {n} ({last.step} {last.phase})")
        if last.phase == "intent" and runbook == "files":
            # the act was never run before the kill; resume ran it once: one invocation, one effect
            assert sum(line.endswith(f" {last.step}") or f" {last.step}-" in line
                       for line in scene.lines("invocations.log")) == 1, n
        if last.phase == "rollback_intent":
            reruns += 1
            assert scene.lines("invocations.log").count(f"--undo {last.step}") == 1, n
    if runbook == "rollback":
        assert reruns == 2  # killed after each rollback's intent, and resumed from there


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run exited with {proc.returncode} before {path.name}: {proc.stdout.read()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} never appeared")
        time.sleep(0.02)


@pytest.mark.parametrize("step", ["one", "two", "four"])
def test_kill_mid_step_then_resume_runs_the_step_again_and_its_effect_happens_once(tmp_path, step):
    scene = Scene(tmp_path, "files")
    (scene.fx / f"hold-{step}").touch()  # the step's command stops half-way until this goes
    proc = subprocess.Popen([STANDBYCTL] + scene.run_args(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        _wait_for(scene.fx / f"started-{step}", proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the operator's session dies, the step's command with it
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    run, entries = scene.journal()
    assert (entries[-1].step, entries[-1].phase) == (step, "intent")  # intent journaled, outcome not
    assert step not in scene.lines("ledger.log")
    (scene.fx / f"hold-{step}").unlink()
    resumed = subprocess.run([STANDBYCTL] + scene.resume_args(run.run_id), capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming files" in resumed.stdout
    assert_same_end_state(scene, f"killed inside {step}")
    assert scene.lines("invocations.log").count(f"do {step}") == 2  # run again after the kill; effect once
