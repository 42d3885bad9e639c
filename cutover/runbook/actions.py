"""The action registry: the named operations a runbook may call, and the context each call receives.

Contract for action authors (read this before writing one):

- An action is `fn(ctx: ActionContext, args) -> dict`. `args` is an instance of the registered `args_model`
  (a pydantic model, validated before the call) or a plain dict when no model is given. The returned dict is the
  step's result: it is journaled in the witness, audited as the step's business outcome (e.g. requests held,
  released, refused) and can be referenced by later steps as `${steps.ID.KEY}`. It must be JSON-serialisable.
- **Actions must be idempotent.** The executor records its intent in the journal before calling an action; if the
  operator's process dies (kill -9, power loss) after the intent and before the outcome is journaled, `resume` calls
  the action again with the same arguments. A second call must reach the same state as one call and return the
  same kind of result (e.g. "freeze" on an already frozen site succeeds and says so). The step's `verify` then
  decides whether the step succeeded.
- Rollbacks are actions too, and must be idempotent and safe when the step's effect is partial or absent (an abort
  of a crashed run rolls back the step that was in flight).
- `read_only=True` promises the action changes nothing. Only read-only actions may be preconditions or verifications;
  `standbyctl runbook plan` runs preconditions for real, so this promise is what keeps a dry run dry.
- Raise an exception (any; `ActionFailed` for an expected one, with a sentence for the operator) to fail an attempt.
  The step's `retries` decide whether it is tried again; its `timeout_s` bounds each attempt (the call runs in a
  worker thread; on a timeout the executor stops waiting, so long actions should look at `ctx.deadline` and stop).
- Report live progress with `ctx.progress("...")`, an intake freeze's length with `ctx.observe_freeze(seconds)`,
  and use `ctx.clock()` / `ctx.sleep()` instead of the time module so tests can inject time.
- `ctx.services` is whatever the composition root (standbyctl) injected; the engine never looks inside.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ActionFailed(Exception):
    """An action could not do its work; the message is for the operator."""


@dataclass
class ActionContext:
    run_id: str
    operator: str
    params: Mapping[str, Any]
    services: Any = None
    step_id: str | None = None
    deadline: float | None = None  # a monotonic() time after which the attempt is abandoned
    progress: Callable[[str], None] = lambda message: None
    observe_freeze: Callable[[float], None] = lambda seconds: None
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


ActionFn = Callable[[ActionContext, Any], dict]


@dataclass(frozen=True)
class Action:
    name: str
    fn: ActionFn
    read_only: bool
    args_model: type[BaseModel] | None
    description: str

    def parse_args(self, args: Mapping[str, Any]) -> Any:
        """Validated arguments; ValueError with a one-line reason when they do not fit the model."""
        if self.args_model is None:
            return dict(args)
        try:
            return self.args_model.model_validate(dict(args))
        except ValidationError as exc:
            reason = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"action {self.name}: {reason}") from None


@dataclass
class ActionRegistry:
    actions: dict[str, Action] = field(default_factory=dict)

    def register(self, name: str, fn: ActionFn, *, read_only: bool, args_model: type[BaseModel] | None = None,
                 description: str) -> None:
        if name in self.actions:
            raise ValueError(f"action {name!r} is registered twice")
        self.actions[name] = Action(name, fn, read_only, args_model, description)

    def register_table(self, table: Mapping[str, tuple]) -> "ActionRegistry":
        """Register every `name: (fn, args_model, read_only, description)` of an action module's table; return
        the registry, so the composition root can chain the modules."""
        for name, (fn, model, read_only, description) in table.items():
            self.register(name, fn, read_only=read_only, args_model=model, description=description)
        return self

    def get(self, name: str) -> Action:
        try:
            return self.actions[name]
        except KeyError:
            raise KeyError(f"unknown action {name!r}; registered: {', '.join(sorted(self.actions))}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.actions

    def names(self) -> list[str]:
        return sorted(self.actions)


class ActionArgs(BaseModel):
    """Base of every action's arguments: unknown arguments are refused (a typo in a runbook is an error), and the
    parsed arguments are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class WaitArgs(ActionArgs):
    seconds: float = Field(ge=0, le=3600)


class CheckHttpArgs(ActionArgs):
    url: str
    expect_status: int = 200
    timeout_s: float = Field(5.0, gt=0, le=300)


class FailArgs(ActionArgs):
    message: str = "failed on purpose"


def wait(ctx: ActionContext, args: WaitArgs) -> dict:
    ctx.progress(f"waiting {args.seconds:g} s")
    ctx.sleep(args.seconds)
    return {"waited_s": args.seconds}


def check_http(ctx: ActionContext, args: CheckHttpArgs) -> dict:
    try:
        status = httpx.get(args.url, timeout=args.timeout_s).status_code
    except httpx.HTTPError as exc:
        raise ActionFailed(f"GET {args.url}: {exc}") from None
    if status != args.expect_status:
        raise ActionFailed(f"GET {args.url} answered {status}, expected {args.expect_status}")
    return {"status": status}


def fail(ctx: ActionContext, args: FailArgs) -> dict:
    raise ActionFailed(args.message)


def register_builtins(registry: ActionRegistry) -> ActionRegistry:
    """The generic actions every runbook may use: wait, check_http (read-only), fail (for tests and drills)."""
    registry.register("wait", wait, read_only=False, args_model=WaitArgs, description="sleep for `seconds`")
    registry.register("check_http", check_http, read_only=True, args_model=CheckHttpArgs,
                      description="GET `url` and expect `expect_status` (default 200)")
    registry.register("fail", fail, read_only=True, args_model=FailArgs,
                      description="always fails with `message` (tests, drills)")
    return registry
