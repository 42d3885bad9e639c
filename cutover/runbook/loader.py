"""Load a runbook file and refuse a bad one before anything runs, naming the file, the line and the reason.

The YAML is composed (not just parsed) so every node keeps its line; a pydantic error's location path
(`steps.2.retries.attempts`) is mapped back to the line of the deepest node that exists. After the schema, the
cross-checks: every action is registered (preconditions and verifications must be read-only), step ids are unique,
every `${params.X}` names a declared parameter and every `${steps.ID...}` an earlier step (a step's own verify and
rollback may also read its own result). `bind_params` then types the operator's `--param` values and refuses a
missing required one or an unknown one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

import yaml
from pydantic import ValidationError

from cutover.runbook.actions import ActionRegistry
from cutover.runbook.refs import RefError, find_refs
from cutover.runbook.spec import Operation, ParamType, Runbook

Loc = tuple  # a path of mapping keys and list indexes


class RunbookError(Exception):
    """A runbook is refused. str() is one line: `FILE:LINE: reason`."""

    def __init__(self, path: Path | str, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{self.path}:{line}: {reason}" if line else f"{self.path}: {reason}")


@dataclass(frozen=True)
class LoadedRunbook:
    runbook: Runbook
    path: Path
    sha256: str  # of the file's bytes: resume refuses a runbook edited mid-run
    lines: Mapping[Loc, int]

    def line(self, *loc) -> int | None:
        return line_of(self.lines, loc)


def node_lines(node: yaml.Node, loc: Loc = ()) -> dict[Loc, int]:
    """Map every location path in a composed YAML document to its 1-based line."""
    lines = {loc: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = loc + (key.value,)
            lines[child] = key.start_mark.line + 1
            lines.update({k: v for k, v in node_lines(value, child).items() if k != child})
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(node_lines(item, loc + (i,)))
    return lines


def line_of(lines: Mapping[Loc, int], loc: Iterable) -> int | None:
    loc = tuple(loc)
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc)


def _compose(path: Path) -> tuple[Any, dict[Loc, int], str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RunbookError(path, None, f"cannot read: {exc.strerror}") from None
    try:
        node = yaml.compose(data.decode("utf-8"), Loader=yaml.SafeLoader)
        raw = yaml.safe_load(data)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise RunbookError(path, mark.line + 1 if mark else None, f"not valid YAML: {exc.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RunbookError(path, None, f"not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or node is None:
        raise RunbookError(path, 1, "expected a mapping with name, description, params, preconditions, steps")
    return raw, node_lines(node), hashlib.sha256(data).hexdigest()


def load_runbook(path: Path | str, registry: ActionRegistry) -> LoadedRunbook:
    """The validated runbook, or RunbookError naming the file, the line and the reason."""
    path = Path(path)
    raw, lines, digest = _compose(path)
    try:
        runbook = Runbook.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p[:1].isupper()))
        where = ".".join(map(str, loc)) or "runbook"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise RunbookError(path, line_of(lines, loc), f"{where}: {err['msg']}{more}") from None
    loaded = LoadedRunbook(runbook, path, digest, lines)
    _check(loaded, registry)
    return loaded


def _check(loaded: LoadedRunbook, registry: ActionRegistry) -> None:
    rb, path = loaded.runbook, loaded.path
    seen: set[str] = set()
    for i, step in enumerate(rb.steps):
        if step.id in seen:
            raise RunbookError(path, loaded.line("steps", i, "id"), f"duplicate step id {step.id!r}")
        seen.add(step.id)
    for i, pre in enumerate(rb.preconditions):
        _check_action(loaded, registry, pre.action, ("preconditions", i, "action"), read_only=True)
        _check_refs(loaded, pre.args, ("preconditions", i, "args"), allowed_steps=())
    order = [s.id for s in rb.steps]
    for i, step in enumerate(rb.steps):
        _check_operation(loaded, registry, step, ("steps", i), order[:i])
        if step.verify is not None:
            _check_action(loaded, registry, step.verify.action, ("steps", i, "verify", "action"), read_only=True)
            _check_refs(loaded, step.verify.args, ("steps", i, "verify", "args"), order[:i + 1])
        if step.rollback is not None:
            _check_operation(loaded, registry, step.rollback, ("steps", i, "rollback"), order[:i + 1])


def _check_operation(loaded: LoadedRunbook, registry: ActionRegistry, op: Operation, loc: Loc,
                     allowed_steps: Collection[str]) -> None:
    if op.action is not None:
        _check_action(loaded, registry, op.action, loc + ("action",), read_only=False)
        _check_refs(loaded, op.args, loc + ("args",), allowed_steps)
    elif op.command is not None:
        _check_refs(loaded, op.command, loc + ("command",), allowed_steps)
    else:
        _check_refs(loaded, {"url": op.http.url, "headers": op.http.headers, "json": op.http.json_body},
                    loc + ("http",), allowed_steps)


def _check_action(loaded: LoadedRunbook, registry: ActionRegistry, name: str, loc: Loc, *, read_only: bool) -> None:
    if name not in registry:
        raise RunbookError(loaded.path, loaded.line(*loc),
                           f"unknown action {name!r}; registered actions: {', '.join(registry.names())}")
    if read_only and not registry.get(name).read_only:
        raise RunbookError(loaded.path, loaded.line(*loc),
                           f"action {name!r} changes things; preconditions and verify take read-only actions only")


def _leaves(value: Any, loc: Loc = ()) -> Iterable[tuple[Loc, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, loc + (key,))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _leaves(item, loc + (i,))
    else:
        yield loc, value


def _check_refs(loaded: LoadedRunbook, value: Any, loc: Loc, allowed_steps: Collection[str]) -> None:
    """Every reference names a declared parameter or an allowed (earlier) step; refused at the line of the value
    that holds it."""
    order = [s.id for s in loaded.runbook.steps]
    for sub, leaf in _leaves(value):
        line = loaded.line(*loc, *sub)
        try:
            refs = list(find_refs(leaf))
        except RefError as exc:
            raise RunbookError(loaded.path, line, str(exc)) from None
        for ref in refs:
            if ref.kind == "params" and ref.name not in loaded.runbook.params:
                raise RunbookError(loaded.path, line, f"{ref.text} names no declared parameter "
                                   f"(declared: {', '.join(loaded.runbook.params) or 'none'})")
            if ref.kind == "steps" and ref.name not in allowed_steps:
                why = "a later step" if ref.name in order else "no step"
                raise RunbookError(loaded.path, line,
                                   f"{ref.text} refers to {why}; only earlier steps' results exist")


def bind_params(loaded: LoadedRunbook, given: Mapping[str, str], sites: Collection[str] | None = None) -> dict:
    """The typed parameters: `given` (strings from `--param NAME=VALUE`, or already typed values) over the defaults.
    RunbookError for an unknown name, a missing required one, or a value that does not fit its type."""
    specs, path = loaded.runbook.params, loaded.path
    for name in given:
        if name not in specs:
            raise RunbookError(path, loaded.line("params") or 1, f"unknown parameter {name!r}; this runbook takes: "
                               f"{', '.join(specs) or 'none'}")
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        line = loaded.line("params", name)
        if name not in given and spec.default is None:
            if spec.required:
                raise RunbookError(path, line, f"missing parameter {name!r} ({spec.help or spec.type.value}); "
                                   f"pass --param {name}=VALUE")
            out[name] = None
            continue
        try:
            out[name] = _typed(given.get(name, spec.default), spec.type, sites)
        except ValueError as exc:
            raise RunbookError(path, line, f"parameter {name!r}: {exc}") from None
    return out


def _typed(value: Any, kind: ParamType, sites: Collection[str] | None) -> Any:
    if kind is ParamType.BOOL:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"{value!r} is not a bool (true/false)")
    if kind is ParamType.INT:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not an int")
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValueError(f"{value!r} is not an int") from None
    if kind is ParamType.FLOAT:
        try:
            return float(str(value).strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    text = str(value)
    if kind is ParamType.SITE and sites is not None and text not in sites:
        raise ValueError(f"{text!r} is not a configured site ({', '.join(sorted(sites))})")
    return text


def find_runbook(name_or_path: str, directory: Path) -> Path:
    """A runbook by name under `directory`, or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    return directory / f"{name_or_path}.yaml"
