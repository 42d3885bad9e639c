"""A customs desk for tests: sends commands through a real ClearancePipeline and keeps the keys unique."""
from __future__ import annotations

import itertools
import random

from standby.clearance.commands import Command, Op, Outcome, Principal, Role
from standby.domain.states import Kind
from standby.synthetic import make_declaration_payload

OPERATOR = Principal(Role.OPERATOR, "desk")
_keys = itertools.count()


class Desk:
    def __init__(self, pipeline, tariff, rng_seed: int = 1):
        self.pipeline, self.tariff, self.rng = pipeline, tariff, random.Random(rng_seed)

    def key(self) -> str:
        return f"k-{next(_keys)}"

    def payload(self, tax_code: str, office: str = "01CA", kind: Kind = Kind.IMPORT) -> dict:
        return make_declaration_payload(self.rng, kind, tax_code, office, self.tariff)

    def one(self, op: Op, payload: dict, office: str = "01CA", principal: Principal = OPERATOR,
            key: str | None = None) -> Outcome:
        return self.pipeline.process([Command(op, principal, key or self.key(), payload, office)])[0]

    def predeclare(self, tax_code: str, office: str = "01CA", kind: Kind = Kind.IMPORT, **kw) -> Outcome:
        return self.one(Op.PRE_DECLARE, self.payload(tax_code, office, kind), office, **kw)

    def register(self, number: str, **kw) -> Outcome:
        return self.one(Op.REGISTER, {"number": number}, **kw)

    def pay(self, number: str, amount: int, **kw) -> Outcome:
        return self.one(Op.PAY, {"number": number, "amount_vnd": amount}, **kw)

    def decide(self, number: str, officer: str, decision: str = "approve") -> Outcome:
        return self.one(Op.DECIDE, {"number": number, "decision": decision, "note": None},
                        principal=Principal(Role.OFFICER, officer))

    def amend(self, number: str, goods: list[dict], **kw) -> Outcome:
        return self.one(Op.AMEND, {"number": number, "goods": goods}, **kw)

    def until_lane(self, tax_codes: list[str], lane: str, office: str = "01CA", kind: Kind = Kind.IMPORT,
                   tries: int = 400) -> Outcome:
        """Pre-declare and register until the risk rules pick `lane` (they are deterministic per declaration)."""
        for i in range(tries):
            made = self.predeclare(tax_codes[i % len(tax_codes)], office, kind)
            assert made.ok, made.body
            registered = self.register(made.body["number"])
            if registered.ok and registered.body["lane"] == lane:
                return registered
        raise AssertionError(f"no {lane} declaration in {tries} tries")
