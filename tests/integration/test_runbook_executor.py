"""The executor against the real SQLite witness: command steps that touch files, intent journaled before outcome,
rollback in reverse on failure, confirmation that re-checks the preconditions after the answer, abort, retries,
the audit and the metrics."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from pydantic import BaseModel

from cutover.runbook.actions import ActionContext, ActionFailed, ActionRegistry, register_builtins
from cutover.runbook.dryrun import dry_run
from cutover.runbook.executor import Executor, request_abort
from cutover.runbook.loader import bind_params, load_runbook
from cutover.runbook.metrics import RunbookMetrics
from cutover.runbook.plan import RUN_EVENT, RunStatus
from cutover.witness import open_witness

RUNBOOKS = Path(__file__).resolve().parents[1] / "runbooks"
SCRIPT = RUNBOOKS / "effect.py"


class PathArgs(BaseModel):
    path: str


class LineArgs(BaseModel):
    path: str
    line: str


class NoteArgs(BaseModel):
    text: str
    freeze_s: float = 0.0


def flag_set(ctx: ActionContext, args: PathArgs) -> dict:
    if not Path(args.path).exists():
        raise ActionFailed(f"{args.path} is not there")
    return {"flag": True}


def file_has(ctx: ActionContext, args: LineArgs) -> dict:
    path = Path(args.path)
    if not path.exists() or args.line not in path.read_text().splitlines():
        raise ActionFailed(f"{args.line!r} is not in {path}")
    return {"found": args.line}


def note(ctx: ActionContext, args: NoteArgs) -> dict:
    ctx.progress(args.text)
    if args.freeze_s:
        ctx.observe_freeze(args.freeze_s)
    return {"text": args.text, "held": 3, "released": 3}


@pytest.fixture()
def registry() -> ActionRegistry:
    r = register_builtins(ActionRegistry())
    r.register("flag_set", flag_set, read_only=True, args_model=PathArgs, description="a file exists")
    r.register("file_has", file_has, read_only=True, args_model=LineArgs, description="a file has a line")
    r.register("note", note, read_only=False, args_model=NoteArgs, description="report and observe a freeze")
    return r


@pytest.fixture()
def witness(tmp_path):
    w = open_witness(f"sqlite:///{tmp_path / 'witness.db'}")
    yield w
    w.close()


@pytest.fixture()
def fx(tmp_path) -> Path:
    d = tmp_path / "fx"
    d.mkdir()
    (d / "flag").touch()
    return d


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def execute(name, registry, witness, fx, **kw):
    loaded = load_runbook(RUNBOOKS / f"{name}.yaml", registry)
    params = bind_params(loaded, {"dir": str(fx), "python": sys.executable, "script": str(SCRIPT)})
    kw.setdefault("assume_yes", True)
    ex = Executor(loaded, registry, witness, operator="alice", **kw)
    return ex.run(params), ex


def test_command_steps_touch_files_in_order_with_intent_journaled_before_each_outcome(registry, witness, fx):
    outcome, _ = execute("files", registry, witness, fx)
    assert outcome.status is RunStatus.DONE
    assert lines(fx / "ledger.log") == ["one", "two", "three-after-2", "four"]  # a result fed a later step
    journal = [(e.step, e.phase) for e in witness.entries(outcome.run_id) if e.step != RUN_EVENT]
    for sid in ("one", "two", "three", "four"):
        assert [p for s, p in journal if s == sid] == ["intent", "acted", "done"], sid
    assert witness.run(outcome.run_id).status == "done"


def test_every_run_and_step_is_audited_with_operator_args_outcome_and_duration(registry, witness, fx):
    outcome, _ = execute("files", registry, witness, fx)
    records = [r for r in witness.audit_records(100) if r.target.startswith(outcome.run_id)]
    steps = [r for r in records if r.action == "runbook.step"]
    assert sorted(r.target.split("/")[1] for r in steps) == ["four", "one", "three", "two"]
    assert all(r.operator == "alice" and r.outcome == "ok" and r.duration_s is not None for r in steps)
    assert all(r.args["argv"][1] == str(SCRIPT) for r in steps)
    three = next(r for r in steps if r.target.endswith("/three"))
    assert three.detail["effect"] == "three-after-2" and three.detail["new"] is True
    runs = {r.outcome for r in records if r.action == "runbook.run"}
    assert runs == {"started", "done"}


def test_a_failed_step_rolls_back_completed_steps_in_reverse(registry, witness, fx):
    outcome, _ = execute("rollback", registry, witness, fx)
    assert outcome.status is RunStatus.ROLLED_BACK and "step d" in outcome.reason
    assert lines(fx / "undo.log") == ["c", "b"]
    assert lines(fx / "ledger.log") == ["a"]  # a has no rollback; d never took effect
    assert lines(fx / "invocations.log").count("--fail d") == 2  # retries: 2 attempts
    order = [(e.step, e.phase) for e in witness.entries(outcome.run_id) if e.phase.startswith("roll")]
    assert order == [("c", "rollback_intent"), ("c", "rolled_back"), ("b", "rollback_intent"), ("b", "rolled_back")]


def test_confirmation_rechecks_preconditions_after_the_answer(registry, witness, fx):
    asked = []

    def operator_reads_while_the_flag_goes(prompt: str) -> bool:
        asked.append(prompt)
        (fx / "flag").unlink()  # the world moves while the operator reads
        return True

    outcome, _ = execute("confirm", registry, witness, fx, assume_yes=False, confirm=operator_reads_while_the_flag_goes)
    assert len(asked) == 1 and "switch" in asked[0] and "the irreversible part" in asked[0]
    assert outcome.status is RunStatus.ROLLED_BACK and "no longer holds after confirmation" in outcome.reason
    assert "switch" not in lines(fx / "ledger.log")  # the confirmed step did not act
    assert lines(fx / "undo.log") == ["prepare"]


def test_confirmed_with_preconditions_still_holding_runs_through(registry, witness, fx):
    metrics = RunbookMetrics("confirm", "alice", 3)
    outcome, _ = execute("confirm", registry, witness, fx, assume_yes=False, confirm=lambda p: True, metrics=metrics)
    assert outcome.status is RunStatus.DONE
    assert lines(fx / "ledger.log") == ["prepare", "switch"]
    finish = [e for e in witness.entries(outcome.run_id) if e.step == "finish" and e.phase == "acted"][0]
    assert finish.detail["result"] == {"text": "switched after 1", "held": 3, "released": 3}
    sample = metrics.registry.get_sample_value
    assert sample("runbook_freeze_seconds_count") == 1 and sample("runbook_freeze_seconds_bucket", {"le": "0.5"}) == 1
    assert sample("runbook_step_duration_seconds_count", {"runbook": "confirm", "step": "switch"}) == 1
    assert sample("runbook_step_index", {"runbook": "confirm"}) == 3
    assert sample("runbook_steps_total", {"runbook": "confirm"}) == 3
    assert sample("runbook_state", {"runbook": "confirm", "operator": "alice"}) == 0  # the run is over


def test_declining_a_confirmation_aborts_and_rolls_back(registry, witness, fx):
    outcome, _ = execute("confirm", registry, witness, fx, assume_yes=False, confirm=lambda p: False)
    assert outcome.status is RunStatus.ABORTED and "declined step switch" in outcome.reason
    assert lines(fx / "undo.log") == ["prepare"] and lines(fx / "ledger.log") == []


def test_a_failing_verify_fails_the_step(registry, witness, fx, tmp_path):
    path = tmp_path / "verify.yaml"
    path.write_text(f"""
name: verify
description: a verify that cannot pass
steps:
  - id: one
    command: ["{sys.executable}", "{SCRIPT}", "{fx}", one]
    verify: {{action: file_has, args: {{path: "{fx}/ledger.log", line: nope}}}}
""")
    loaded = load_runbook(path, registry)
    outcome = Executor(loaded, registry, witness, operator="alice").run({})
    assert outcome.status is RunStatus.ROLLED_BACK and "verify file_has" in outcome.reason


def test_retries_use_the_injected_sleep_and_a_timeout_fails_an_attempt(registry, witness, fx, tmp_path):
    path = tmp_path / "retry.yaml"
    release = threading.Event()
    registry.register("hang", lambda ctx, args: release.wait(30) and {}, read_only=False, args_model=None,
                      description="blocks until released")
    path.write_text("""
name: retry
description: an action slower than its timeout, tried twice
steps:
  - id: slow
    action: hang
    timeout_s: 0.2
    retries: {attempts: 2, wait_s: 7}
""")
    slept = []

    def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    loaded = load_runbook(path, registry)
    ex = Executor(loaded, registry, witness, operator="alice", sleep=fake_sleep)
    try:
        outcome = ex.run({})
    finally:
        release.set()
    assert outcome.status is RunStatus.ROLLED_BACK and "longer than 0.2 s" in outcome.reason
    assert 7 in slept  # tenacity waited through the injected sleep between the two attempts


def test_an_abort_recorded_by_another_process_is_seen_before_the_next_step(registry, witness, fx):
    def abort_from_elsewhere(ctx: ActionContext, args: NoteArgs) -> dict:
        request_abort(witness, ctx.run_id, "bob", "stop now")
        return {"text": args.text}

    registry.actions.pop("note")
    registry.register("note", abort_from_elsewhere, read_only=False, args_model=NoteArgs, description="aborts")
    loaded = load_runbook(RUNBOOKS / "confirm.yaml", registry)
    rb = loaded.runbook.model_copy(update={"steps": [loaded.runbook.steps[0], loaded.runbook.steps[2],
                                                     loaded.runbook.steps[1]]})
    loaded = type(loaded)(rb, loaded.path, loaded.sha256, loaded.lines)
    params = bind_params(loaded, {"dir": str(fx), "python": sys.executable, "script": str(SCRIPT)})
    outcome = Executor(loaded, registry, witness, operator="alice", assume_yes=True).run(params)
    assert outcome.status is RunStatus.ABORTED
    assert "switch" not in lines(fx / "ledger.log") and lines(fx / "undo.log") == ["prepare"]
    assert any(r.action == "runbook.abort" and r.operator == "bob" for r in witness.audit_records(50))


def test_failed_preconditions_refuse_the_run_and_change_nothing(registry, witness, fx):
    (fx / "flag").unlink()
    outcome, _ = execute("confirm", registry, witness, fx)
    assert outcome.status is RunStatus.REFUSED and "flag_set" in outcome.reason
    assert not (fx / "invocations.log").exists()


def test_dry_run_resolves_arguments_runs_preconditions_and_changes_nothing(registry, witness, fx):
    loaded = load_runbook(RUNBOOKS / "confirm.yaml", registry)
    params = bind_params(loaded, {"dir": str(fx), "python": sys.executable, "script": str(SCRIPT)})
    plan = dry_run(loaded, registry, params, operator="alice")
    assert plan.ok and plan.preconditions == [("flag_set", None)]
    assert plan.steps[0].does.endswith(f"{fx} prepare") and plan.steps[1].confirm
    assert "<steps.prepare.count at run time>" in plan.steps[2].does
    assert not (fx / "invocations.log").exists() and witness.runs(10) == []
    (fx / "flag").unlink()
    assert not dry_run(loaded, registry, params, operator="alice").ok


def test_resume_of_a_finished_run_changes_nothing(registry, witness, fx):
    outcome, ex = execute("files", registry, witness, fx)
    before = len(witness.entries(outcome.run_id))
    again = ex.resume(outcome.run_id)
    assert again.status is RunStatus.DONE and len(witness.entries(outcome.run_id)) == before
    assert lines(fx / "invocations.log").count("do one") == 1


@pytest.fixture()
def other_system():
    """A site's tax/manifest/risk system stand-in: records what it was sent, answers 201 with JSON."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the stdlib's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers.get("Authorization"), body))
            status = 500 if self.path.endswith("/broken") else 201
            payload = json.dumps({"ticket": f"T-{len(seen)}"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_http_steps_call_another_system_pass_results_on_and_keep_no_credentials(registry, witness, tmp_path,
                                                                               other_system):
    url, seen = other_system
    path = tmp_path / "http.yaml"
    path.write_text(f"""
name: http
description: tell the risk system, then a broken manifest system fails the run
params:
  site: {{type: str, default: B}}
steps:
  - id: risk
    http:
      method: POST
      url: "{url}/cutover/${{params.site}}"
      headers: {{Authorization: "Bearer s3cret"}}
      json: {{site: "${{params.site}}"}}
      expect_status: 201
    rollback:
      http: {{method: POST, url: "{url}/undo/${{steps.risk.body.ticket}}", json: {{}}, expect_status: [201]}}
  - id: manifest
    http: {{method: POST, url: "{url}/broken", json: {{after: "${{steps.risk.body.ticket}}"}}}}
""")
    loaded = load_runbook(path, registry)
    outcome = Executor(loaded, registry, witness, operator="alice").run(bind_params(loaded, {}))
    assert outcome.status is RunStatus.ROLLED_BACK and "answered 500, expected 200" in outcome.reason
    assert seen == [("/cutover/B", "Bearer s3cret", {"site": "B"}), ("/broken", None, {"after": "T-1"}),
                    ("/undo/T-1", None, {})]
    journal = repr(witness.entries(outcome.run_id)) + repr(witness.audit_records(50))
    assert "s3cret" not in journal and "(not recorded)" in journal
