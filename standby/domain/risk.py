"""Deterministic, explainable lane selection (green / yellow / red) from an ordered list of risk rules.

Contracts:
- `RiskRules.decide(facts)` is pure: the same facts and rules always give the same `LaneDecision`, on every
  machine and in every process. The first rule whose conditions all hold wins; the last rule, `default`, has no
  conditions, so every declaration gets a lane.
- Random selection is a deterministic sample: a rule's `sample: {percent, salt}` holds for the declarations whose
  SHA-256 of ``salt|declaration_base`` falls in the lowest `percent` of 10,000 buckets. An amendment keeps its
  base number, so it gets the same sample outcome; different salts give independent samples.
- `LaneDecision.reason` is a sentence an officer can read: the rule's description and the facts that matched.
- `RiskRules.from_dict` / `load_risk_rules` validate the YAML and raise `ValueError` naming the rule and field.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Mapping

import yaml

from standby.domain.states import Kind, Lane

SAMPLE_BUCKETS = 10_000  # percent with up to two decimals, e.g. 2.5 %


@dataclass(frozen=True)
class RiskFacts:
    """What the risk profile may look at. `declaration_base` is the 11-digit base number (sampling key).

    `hs_headings` (4-digit) is optional so callers that only know chapters can still build facts.
    """

    kind: Kind
    enterprise_risk_class: str
    enterprise_age_days: int
    office_code: str
    hs_chapters: frozenset[str]
    origins: frozenset[str]
    customs_value_vnd: int
    line_count: int
    declaration_base: str
    hs_headings: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LaneDecision:
    lane: Lane
    rule_id: str
    reason: str


# Which operators make sense for which fact: sets are matched by overlap, numbers by comparison.
_SET, _TEXT, _NUMBER = "set", "text", "number"
FIELD_TYPES: Mapping[str, str] = {
    "kind": _TEXT,
    "enterprise_risk_class": _TEXT,
    "enterprise_age_days": _NUMBER,
    "office_code": _TEXT,
    "hs_chapters": _SET,
    "hs_headings": _SET,
    "origins": _SET,
    "customs_value_vnd": _NUMBER,
    "line_count": _NUMBER,
    "declaration_base": _TEXT,
}
OPERATORS: Mapping[str, frozenset[str]] = {
    _SET: frozenset({"any_in"}),
    _TEXT: frozenset({"eq", "in", "not_in"}),
    _NUMBER: frozenset({"eq", "gt", "ge", "lt", "le"}),
}
_COMPARE = {
    "eq": (lambda a, b: a == b, "="),
    "gt": (lambda a, b: a > b, ">"),
    "ge": (lambda a, b: a >= b, ">="),
    "lt": (lambda a, b: a < b, "<"),
    "le": (lambda a, b: a <= b, "<="),
}
assert set(FIELD_TYPES) == {f.name for f in fields(RiskFacts)}


def _fact(facts: RiskFacts, field: str) -> Any:
    value = getattr(facts, field)
    return value.value if isinstance(value, Kind) else value  # rules say `import`, not Kind.IMPORT


@dataclass(frozen=True)
class Condition:
    """`field op value`; for `in`/`not_in`/`any_in` the value is a frozenset."""

    field: str
    op: str
    value: Any

    def holds(self, facts: RiskFacts) -> bool:
        actual = _fact(facts, self.field)
        if self.op == "any_in":
            return not actual.isdisjoint(self.value)
        if self.op == "in":
            return actual in self.value
        if self.op == "not_in":
            return actual not in self.value
        return _COMPARE[self.op][0](actual, self.value)

    def explain(self, facts: RiskFacts) -> str:
        actual = _fact(facts, self.field)
        if self.op == "any_in":
            return f"{self.field} includes {', '.join(sorted(actual & self.value))}"
        if self.op == "not_in":
            return f"{self.field} is {actual}, not {' or '.join(sorted(self.value))}"
        if self.op == "in" or FIELD_TYPES[self.field] == _TEXT:
            return f"{self.field} is {actual}"
        return f"{self.field} {actual:,} {_COMPARE[self.op][1]} {self.value:,}"


@dataclass(frozen=True)
class Sample:
    """Holds for a stable `percent` share of declarations, chosen by hashing `salt` with the base number."""

    percent: Decimal
    salt: str

    def holds(self, facts: RiskFacts) -> bool:
        return sample_bucket(self.salt, facts.declaration_base) < self.percent * SAMPLE_BUCKETS / 100

    def explain(self, facts: RiskFacts) -> str:
        return f"selected by the {self.percent}% random sample '{self.salt}'"


def sample_bucket(salt: str, declaration_base: str) -> int:
    """The declaration's bucket (0..9,999) for a salt. hashlib, not hash(): stable across processes."""
    digest = hashlib.sha256(f"{salt}|{declaration_base}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SAMPLE_BUCKETS


@dataclass(frozen=True)
class RiskRule:
    id: str
    description: str
    lane: Lane
    when: tuple[Condition | Sample, ...] = ()

    def matches(self, facts: RiskFacts) -> bool:
        return all(c.holds(facts) for c in self.when)


@dataclass(frozen=True)
class RiskRules:
    rules: tuple[RiskRule, ...]

    def decide(self, facts: RiskFacts) -> LaneDecision:
        """The first matching rule's lane, its id and a readable reason. Pure."""
        for rule in self.rules:
            if rule.matches(facts):
                return LaneDecision(rule.lane, rule.id, _reason(rule, facts))
        raise AssertionError("unreachable: the validated default rule always matches")

    @classmethod
    def from_dict(cls, d: Any) -> "RiskRules":
        """Build from decoded YAML ``{rules: [...]}``; ValueError names the bad rule and field."""
        if not isinstance(d, Mapping) or set(d) - {"rules"} or not isinstance(d.get("rules"), list):
            raise ValueError("risk rules: the document must be a mapping with one key, 'rules', holding a list")
        rules = tuple(_parse_rule(i, raw) for i, raw in enumerate(d["rules"]))
        if not rules or rules[-1].id != "default" or rules[-1].when:
            raise ValueError(
                "risk rules: the last rule must be 'default' with no conditions, so every declaration gets a lane"
            )
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise ValueError(f"risk rules: rule id {rule.id!r} is used twice")
            seen.add(rule.id)
            if not rule.when and rule is not rules[-1]:
                raise ValueError(f"risk rules: rule {rule.id!r} has no conditions, so the rules after it never match")
        return cls(rules)


def load_risk_rules(path: str | Path) -> RiskRules:
    """Read and validate a risk-rules YAML file (see config/risk_rules.yaml)."""
    with open(path, encoding="utf-8") as fh:
        return RiskRules.from_dict(yaml.safe_load(fh))


def _reason(rule: RiskRule, facts: RiskFacts) -> str:
    if not rule.when:
        return rule.description
    return f"{rule.description} Matched: {'; '.join(c.explain(facts) for c in rule.when)}."


def _parse_rule(index: int, raw: Any) -> RiskRule:
    where = f"risk rules: rule {index}"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be a mapping with id, description, lane and when")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise ValueError(f"{where}: id must be a non-empty string")
    where = f"risk rules: rule {index} ({rule_id!r})"
    unknown = set(raw) - {"id", "description", "lane", "when"}
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(map(str, unknown))[0]!r}")
    description = raw.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"{where}: description must be a sentence an officer can read")
    try:
        lane = Lane(raw.get("lane"))
    except ValueError:
        raise ValueError(f"{where}: lane must be green, yellow or red, got {raw.get('lane')!r}") from None
    when = raw.get("when", [])
    if not isinstance(when, list):
        raise ValueError(f"{where}: when must be a list of conditions")
    conditions = tuple(_parse_condition(f"{where}: when[{i}]", c) for i, c in enumerate(when))
    return RiskRule(rule_id, description.strip(), lane, conditions)


def _parse_condition(where: str, raw: Any) -> Condition | Sample:
    if isinstance(raw, Mapping) and set(raw) == {"sample"}:
        return _parse_sample(where, raw["sample"])
    if not isinstance(raw, Mapping) or "field" not in raw or len(raw) != 2:
        raise ValueError(f"{where} must be {{field: <fact>, <operator>: <value>}} or {{sample: {{percent, salt}}}}")
    field = raw["field"]
    if field not in FIELD_TYPES:
        raise ValueError(f"{where}: unknown field {field!r}; known fields: {', '.join(FIELD_TYPES)}")
    (op,) = set(raw) - {"field"}
    kind = FIELD_TYPES[field]
    if op not in OPERATORS[kind]:
        allowed = ", ".join(sorted(OPERATORS[kind]))
        raise ValueError(f"{where}: operator {op!r} does not apply to {field}; use {allowed}")
    return Condition(field, op, _parse_value(f"{where}.{op}", field, op, raw[op]))


def _parse_value(where: str, field: str, op: str, value: Any) -> Any:
    if op in ("any_in", "in", "not_in"):
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where} must be a non-empty list of quoted strings (codes keep their leading zeros)")
        values = frozenset(value)
    elif FIELD_TYPES[field] == _NUMBER:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be a whole number for {field}, got {value!r}")
        return value
    elif not isinstance(value, str):
        raise ValueError(f"{where} must be a string for {field}, got {value!r}")
    else:
        values = frozenset({value})
    if field == "kind" and not values <= {k.value for k in Kind}:
        raise ValueError(f"{where}: kind is import or export, got {sorted(values)}")
    return values if op != "eq" else value


def _parse_sample(where: str, raw: Any) -> Sample:
    if not isinstance(raw, Mapping) or set(raw) != {"percent", "salt"}:
        raise ValueError(f"{where}.sample must have exactly percent and salt")
    salt, percent = raw["salt"], raw["percent"]
    if not isinstance(salt, str) or not salt:
        raise ValueError(f"{where}.sample.salt must be a non-empty string")
    try:
        number = Decimal(str(percent)) if not isinstance(percent, bool) else None
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite() or not 0 < number <= 100 or number * 100 != int(number * 100):
        raise ValueError(f"{where}.sample.percent must be above 0 and at most 100, in steps of 0.01, got {percent!r}")
    return Sample(number, salt)
