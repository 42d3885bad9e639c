"""`standbyctl runbook ...` as an operator meets it: identity required, one-line refusals with exit 2, exit codes by
outcome, the journal printed, abort of a crashed run, the dry run, and /metrics served while a run is in progress."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cutover.runbook.actions import ActionRegistry, register_builtins
from cutover.runbook.executor import Executor
from cutover.runbook.loader import bind_params, load_runbook
from cutover.witness import open_witness
from standby.api.auth import issue_token
from standby.clearance.commands import Role
from standbyctl.cli import main
from tests.conftest import REPO, free_port

RUNBOOKS = REPO / "tests" / "runbooks"
SCRIPT = RUNBOOKS / "effect.py"


@pytest.fixture()
def world(tmp_path):
    fx = tmp_path / "fx"
    fx.mkdir()
    config = tmp_path / "standby.yaml"
    config.write_text(yaml.safe_dump({
        "root": str(tmp_path), "witness_url": f"sqlite:///{tmp_path / 'witness.db'}",
        "auth": {"tokens_file": str(tmp_path / "tokens.yaml")},
        "sites": {"A": {"site_digit": 1, "database_url": f"sqlite:///{tmp_path / 'a.db'}"},
                  "B": {"site_digit": 2, "database_url": f"sqlite:///{tmp_path / 'b.db'}"}}}))
    return tmp_path, config, fx


def cli(config: Path, *args: str):
    return CliRunner().invoke(main, ["--config", str(config), "runbook", *args])


def files_params(fx: Path) -> list[str]:
    return ["--param", f"dir={fx}", "--param", f"python={sys.executable}", "--param", f"script={SCRIPT}"]


def one_line_error(result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


def witness_of(tmp_path: Path):
    return open_witness(f"sqlite:///{tmp_path / 'witness.db'}")


def test_a_run_without_operator_identity_is_refused(world):
    _, config, fx = world
    result = cli(config, "run", str(RUNBOOKS / "files.yaml"), *files_params(fx), "--metrics-port", "0")
    assert result.exit_code == 2 and "--operator NAME or --token TOKEN" in one_line_error(result)
    assert not (fx / "invocations.log").exists()


def test_a_bad_runbook_is_refused_with_file_and_line_and_exit_2(world):
    _, config, _ = world
    bad = RUNBOOKS / "bad" / "unknown_action.yaml"
    result = cli(config, "run", str(bad), "--operator", "alice", "--metrics-port", "0")
    assert result.exit_code == 2
    assert f"runbook refused: {bad}:8: unknown action 'teleport'" in one_line_error(result)


def test_an_unknown_or_missing_parameter_exits_2(world):
    _, config, fx = world
    result = cli(config, "run", str(RUNBOOKS / "files.yaml"), *files_params(fx), "--param", "dri=x",
                 "--operator", "alice", "--metrics-port", "0")
    assert result.exit_code == 2 and "unknown parameter 'dri'" in one_line_error(result)
    result = cli(config, "plan", str(RUNBOOKS / "files.yaml"), "--operator", "alice")
    assert result.exit_code == 2 and "missing parameter 'dir'" in one_line_error(result)


def test_operator_token_names_the_operator_and_other_roles_are_refused(world):
    tmp_path, config, fx = world
    token = issue_token(tmp_path / "tokens.yaml", Role.OPERATOR, "carol")
    declarant = issue_token(tmp_path / "tokens.yaml", Role.DECLARANT, "0101234567")
    result = cli(config, "run", str(RUNBOOKS / "files.yaml"), *files_params(fx), "--token", declarant,
                 "--metrics-port", "0")
    assert result.exit_code == 2 and "runbooks need an operator token" in one_line_error(result)
    result = cli(config, "run", str(RUNBOOKS / "files.yaml"), *files_params(fx), "--token", token,
                 "--metrics-port", "0")
    assert result.exit_code == 0, result.output
    w = witness_of(tmp_path)
    try:
        assert w.runs(1)[0].operator == "carol"
        assert {r.operator for r in w.audit_records(50)} == {"carol"}
    finally:
        w.close()


def test_exit_codes_0_done_and_1_rolled_back_and_status_prints_the_journal(world):
    tmp_path, config, fx = world
    done = cli(config, "run", str(RUNBOOKS / "files.yaml"), *files_params(fx), "--operator", "alice",
               "--metrics-port", "0")
    assert done.exit_code == 0 and "done" in done.output.splitlines()[-1]
    rolled = cli(config, "run", str(RUNBOOKS / "rollback.yaml"), *files_params(fx), "--operator", "alice",
                 "--metrics-port", "0")
    assert rolled.exit_code == 1 and "rolled_back" in rolled.output.splitlines()[-1]
    w = witness_of(tmp_path)
    run_id = w.runs(5)[0].run_id
    w.close()
    status = cli(config, "status", run_id)
    assert status.exit_code == 0 and "rolled_back" in status.output and "rollback_intent" in status.output
    listing = cli(config, "list", "--dir", str(RUNBOOKS))
    assert "four idempotent file effects" in listing.output and run_id in listing.output


def test_plan_is_a_dry_run_that_creates_no_run(world):
    tmp_path, config, fx = world
    result = cli(config, "plan", str(RUNBOOKS / "files.yaml"), *files_params(fx), "--operator", "alice")
    assert result.exit_code == 0 and "ready to run" in result.output
    assert "<steps.two.count at run time>" in result.output
    w = witness_of(tmp_path)
    try:
        assert w.runs(5) == []
    finally:
        w.close()
    assert not (fx / "invocations.log").exists()


class Crash(Exception):
    pass


def test_abort_of_a_crashed_run_rolls_back_what_it_did_and_ends_aborted(world):
    tmp_path, config, fx = world
    registry = register_builtins(ActionRegistry())
    loaded = load_runbook(RUNBOOKS / "files.yaml", registry)
    params = bind_params(loaded, {"dir": str(fx), "python": sys.executable, "script": str(SCRIPT)})

    def crash_after_step_two(seq: int) -> None:
        if seq == 8:  # started, preconditions, one x3, two x3
            raise Crash()

    w = witness_of(tmp_path)
    executor = Executor(loaded, registry, w, operator="alice", after_append=crash_after_step_two)
    run_id = executor.start(params)
    with pytest.raises(Crash):
        executor.drive(run_id)
    w.close()
    result = cli(config, "abort", run_id, "--operator", "bob", "--reason", "window closed")
    assert result.exit_code == 0, result.output
    assert "aborted (window closed)" in result.output
    assert (fx / "undo.log").read_text().split() == ["two"]  # one has no rollback
    again = cli(config, "abort", run_id, "--operator", "bob")
    assert again.exit_code == 2 and "already aborted" in one_line_error(again)


def test_metrics_are_served_while_the_run_is_in_progress(world):
    tmp_path, config, _ = world
    port, out = free_port(), tmp_path / "scraped.txt"
    result = cli(config, "run", str(RUNBOOKS / "scrape.yaml"), "--operator", "alice", "--metrics-port", str(port),
                 "--param", f"python={sys.executable}", "--param", f"url=http://127.0.0.1:{port}/metrics",
                 "--param", f"out={out}")
    assert result.exit_code == 0, result.output
    body = out.read_text()
    assert 'runbook_state{operator="alice",runbook="scrape"} 1.0' in body
    assert 'runbook_step_index{runbook="scrape"} 2.0' in body
    assert 'runbook_steps_total{runbook="scrape"} 2.0' in body
    assert 'runbook_step_duration_seconds_count{runbook="scrape",step="first"} 1.0' in body
    assert 'runbook_freeze_seconds_bucket{le="2.0"} 0.0' in body


def test_abort_while_the_run_is_alive_is_carried_out_by_the_running_process(world):
    import os
    import signal
    import subprocess
    import time

    tmp_path, config, fx = world
    (fx / "hold-three-after-2").touch()  # step three blocks half-way
    proc = subprocess.Popen([str(Path(sys.executable).with_name("standbyctl")), "--config", str(config), "runbook",
                             "run", str(RUNBOOKS / "files.yaml"), *files_params(fx), "--operator", "alice",
                             "--metrics-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (fx / "started-three-after-2").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
            time.sleep(0.02)
        w = witness_of(tmp_path)
        run_id = w.runs(1)[0].run_id
        w.close()
        resume = cli(config, "resume", run_id, "--operator", "bob", "--metrics-port", "0")
        assert resume.exit_code == 2 and "being driven by process" in one_line_error(resume)
        result = cli(config, "abort", run_id, "--operator", "bob", "--reason", "change window over")
        assert result.exit_code == 0 and "rolls back before its next step" in result.output
        (fx / "hold-three-after-2").unlink()
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, out
    assert "aborted: change window over" in out
    assert (fx / "undo.log").read_text().split() == ["two"]
    assert "four" not in (fx / "ledger.log").read_text().split()
