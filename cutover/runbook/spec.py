"""The runbook schema: what a runbook YAML file may say, validated with pydantic (extra keys are refused).

A runbook is data. It names parameters, read-only preconditions and ordered steps; each step does exactly one of
`action` (a registered action with `args`), `command` (an argv list, run without a shell; a non-zero exit is a
failure) or `http` (a call to another system, e.g. a site's tax, manifest or risk service). Strings anywhere in a
step's arguments may reference `${params.NAME}` and results of earlier steps `${steps.ID.KEY}` (see refs.py).
Cross-checks that need the action registry (unknown action, bad reference) are the loader's job.
"""
from __future__ import annotations

import re
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STEP_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamType(str, Enum):
    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    SITE = "site"  # a site id from the settings; checked against the configured sites


class ParamSpec(_Strict):
    type: ParamType = ParamType.STR
    default: Any = None
    required: bool = False
    help: str = ""

    @model_validator(mode="after")
    def _required_has_no_default(self) -> "ParamSpec":
        if self.required and self.default is not None:
            raise ValueError("a required parameter has no default (drop one of the two)")
        return self


class ActionCall(_Strict):
    """A registered action and its arguments (used by preconditions and verifications). `timeout_s` bounds a
    precondition (a verify of a large database takes minutes); a verification runs within its step's timeout."""

    action: str
    args: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(30.0, gt=0, le=86_400)


class HttpCall(_Strict):
    method: str = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(None, alias="json")
    expect_status: list[int] = Field(default_factory=lambda: [200])

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        value = value.upper()
        if value not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
            raise ValueError(f"unsupported HTTP method {value!r}")
        return value

    @field_validator("expect_status", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, int) else value


class Operation(_Strict):
    """Exactly one of action (+ args), command, or http: what a step or a rollback does."""

    action: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    command: list[str] | None = None
    http: HttpCall | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Operation":
        chosen = [k for k in ("action", "command", "http") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(f"needs exactly one of action, command, http (has {', '.join(chosen) or 'none'})")
        if self.args and self.action is None:
            raise ValueError("args belong to an action; a command carries its arguments in its argv list")
        if self.command is not None and not self.command:
            raise ValueError("a command is a non-empty argv list")
        return self

    @property
    def kind(self) -> str:
        return "action" if self.action is not None else "command" if self.command is not None else "http"

    def describe(self) -> str:
        if self.action is not None:
            return f"action {self.action}"
        if self.command is not None:
            return "command " + " ".join(self.command)
        return f"http {self.http.method} {self.http.url}"


class Retries(_Strict):
    attempts: int = Field(1, ge=1, le=100)
    wait_s: float = Field(0.0, ge=0, le=3600)


class Step(Operation):
    id: str
    description: str = ""
    verify: ActionCall | None = None
    timeout_s: float = Field(60.0, gt=0, le=86400)
    retries: Retries = Retries()
    rollback: Operation | None = None
    confirm: bool = False
    point_of_no_return: bool = False

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not STEP_ID.match(value):
            raise ValueError("a step id is lower case letters, digits, '_' or '-', starting with a letter")
        return value


class Runbook(_Strict):
    name: str
    description: str
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    preconditions: list[ActionCall] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)
    rollback_on_abort: bool = True  # abort rolls back completed steps (up to a point of no return)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not STEP_ID.match(value):
            raise ValueError("a runbook name is lower case letters, digits, '_' or '-', starting with a letter")
        return value

    def step_index(self, step_id: str) -> int:
        for i, step in enumerate(self.steps):
            if step.id == step_id:
                return i
        raise KeyError(step_id)
