"""`standbyctl runbook plan`: a dry run. Every argument is resolved (later steps' results read as placeholders),
every action's arguments are checked against its model, and the read-only preconditions are run for real. Nothing
is journaled and nothing that changes state is called."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cutover.runbook.actions import ActionContext, ActionRegistry
from cutover.runbook.loader import LoadedRunbook
from cutover.runbook.operations import call_action
from cutover.runbook.refs import RefError, placeholder_results, resolve
from cutover.runbook.spec import Operation


@dataclass(frozen=True)
class PlannedStep:
    index: int
    id: str
    description: str
    does: str  # the operation with its arguments resolved
    verify: str | None
    rollback: str | None
    confirm: bool
    point_of_no_return: bool
    timeout_s: float
    attempts: int


@dataclass
class DryRun:
    runbook: str
    params: dict
    preconditions: list[tuple[str, str | None]] = field(default_factory=list)  # (action, failure or None)
    findings: list[list[str]] = field(default_factory=list)  # per precondition: what it reported and returned
    steps: list[PlannedStep] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # arguments that cannot work, one sentence each

    @property
    def ok(self) -> bool:
        return not self.problems and all(failure is None for _, failure in self.preconditions)


def dry_run(loaded: LoadedRunbook, registry: ActionRegistry, params: dict, *, operator: str,
            services: Any = None) -> DryRun:
    rb = loaded.runbook
    out = DryRun(rb.name, dict(params))
    for pre in rb.preconditions:
        said: list[str] = []
        ctx = ActionContext(run_id="dry-run", operator=operator, params=params, services=services,
                            progress=said.append)
        try:
            result = call_action(registry, pre.action, resolve(pre.args, params, {}), ctx, pre.timeout_s)
            out.preconditions.append((pre.action, None))
            if result:  # what the check measured (lag, estimated freeze, rows verified) is worth showing
                said.append(", ".join(f"{k}={v}" for k, v in result.items()))
        except Exception as exc:  # noqa: BLE001 - a failed check is reported, not raised
            out.preconditions.append((pre.action, str(exc) or type(exc).__name__))
        out.findings.append(said)
    results = placeholder_results([s.id for s in rb.steps])
    for i, step in enumerate(rb.steps):
        does = _describe(registry, step, params, results, out.problems, step.id)
        verify = None
        if step.verify is not None:
            verify = _describe(registry, Operation(action=step.verify.action, args=step.verify.args), params,
                               results, out.problems, f"{step.id} verify")
        rollback = _describe(registry, step.rollback, params, results, out.problems, f"{step.id} rollback") \
            if step.rollback is not None else None
        out.steps.append(PlannedStep(i, step.id, step.description, does, verify, rollback, step.confirm,
                                     step.point_of_no_return, step.timeout_s, step.retries.attempts))
    return out


def _describe(registry: ActionRegistry, op: Operation, params: dict, results: dict, problems: list[str],
              where: str) -> str:
    try:
        if op.action is not None:
            args = resolve(op.args, params, results)
            if "at run time>" not in repr(args):
                try:
                    registry.get(op.action).parse_args(args)
                except ValueError as exc:
                    problems.append(f"{where}: {exc}")
            return f"{op.action}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
        if op.command is not None:
            return "$ " + " ".join(str(a) for a in resolve(op.command, params, results))
        url = resolve(op.http.url, params, results)
        return f"{op.http.method} {url} (expect {' or '.join(map(str, op.http.expect_status))})"
    except RefError as exc:
        problems.append(f"{where}: {exc}")
        return op.describe()
