"""References in runbook arguments: `${params.NAME}` and `${steps.ID.KEY[.KEY...]}`. Pure functions.

Contract: a string that is exactly one reference is replaced by the referenced value with its type (an int stays
an int); a reference inside a longer string is interpolated as text. Dicts and lists are walked. `$${` is a
literal `${`. An unresolvable reference raises RefError naming it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

REF = re.compile(r"(?<!\$)\$\{([^}]*)\}")


class RefError(ValueError):
    """A reference is malformed or names something that does not exist (yet)."""


@dataclass(frozen=True)
class Ref:
    text: str  # the whole ${...}
    kind: str  # "params" or "steps"
    name: str  # parameter name or step id
    path: tuple[str, ...] = ()  # keys into a step's result


def parse_ref(inner: str) -> Ref:
    parts = inner.strip().split(".")
    if parts[0] == "params" and len(parts) == 2 and parts[1]:
        return Ref("${" + inner + "}", "params", parts[1])
    if parts[0] == "steps" and len(parts) >= 3 and all(parts[1:]):
        return Ref("${" + inner + "}", "steps", parts[1], tuple(parts[2:]))
    raise RefError(f"bad reference ${{{inner}}}: use ${{params.NAME}} or ${{steps.ID.KEY}}")


def find_refs(value: Any) -> Iterator[Ref]:
    """Every reference in a value (strings inside dicts and lists included)."""
    if isinstance(value, str):
        for match in REF.finditer(value):
            yield parse_ref(match.group(1))
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from find_refs(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from find_refs(item)


def lookup(ref: Ref, params: Mapping[str, Any], results: Mapping[str, Mapping]) -> Any:
    if ref.kind == "params":
        if ref.name not in params:
            raise RefError(f"{ref.text}: no parameter {ref.name!r}")
        return params[ref.name]
    if ref.name not in results:
        raise RefError(f"{ref.text}: step {ref.name!r} has no result (yet)")
    value: Any = results[ref.name]
    if isinstance(value, Pending):
        return f"<{ref.text[2:-1]} at run time>"
    for key in ref.path:
        if not isinstance(value, Mapping) or key not in value:
            raise RefError(f"{ref.text}: step {ref.name!r}'s result has no {key!r}")
        value = value[key]
    return value


def resolve(value: Any, params: Mapping[str, Any], results: Mapping[str, Mapping]) -> Any:
    """`value` with every reference replaced (see the module's contract)."""
    if isinstance(value, str):
        whole = REF.fullmatch(value)
        if whole:
            return lookup(parse_ref(whole.group(1)), params, results)
        text = REF.sub(lambda m: str(lookup(parse_ref(m.group(1)), params, results)), value)
        return text.replace("$${", "${")
    if isinstance(value, Mapping):
        return {k: resolve(v, params, results) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [resolve(v, params, results) for v in value]
    return value


class Pending(dict):
    """A step result that does not exist yet (a dry run): any reference into it reads as a placeholder."""


def placeholder_results(step_ids: list[str]) -> dict[str, Mapping]:
    return {sid: Pending() for sid in step_ids}
