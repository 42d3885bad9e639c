"""The demo's traffic: declarants and officers working declarations through the HTTP API, and what they saw."""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

from loadtests.client import Reply, SiteClient
from loadtests.percentile import percentile_ms
from standby.domain.states import Kind
from standby.domain.tariff import Tariff
from standby.synthetic import make_declaration_payload


@dataclass
class DemoStats:
    lanes: Counter = field(default_factory=Counter)
    rules: Counter = field(default_factory=Counter)
    final_states: Counter = field(default_factory=Counter)
    refusals: Counter = field(default_factory=Counter)
    decision_seconds: list[float] = field(default_factory=list)
    amended: int = 0
    examples: dict[str, str] = field(default_factory=dict)

    def percentile_ms(self, p: float) -> float | None:
        """The p-th percentile of the decision latencies, in ms (loadtests.percentile); None before any."""
        return percentile_ms(self.decision_seconds, p)


@dataclass(frozen=True)
class Cast:
    """Who takes part: declarant tokens by tax code, officer tokens by officer id, the offices in play."""

    declarants: dict[str, str]
    officers: dict[str, str]
    offices: list[str]
    blocked: tuple[str, str] | None = None  # a suspended enterprise and its token, to show a refusal


async def run_traffic(client: SiteClient, cast: Cast, tariff: Tariff, count: int, concurrency: int,
                      rng: random.Random) -> DemoStats:
    stats = DemoStats()
    gate = asyncio.Semaphore(concurrency)
    plans = [(rng.choice(list(cast.declarants)), rng.choice(cast.offices),
              Kind.IMPORT if rng.random() < 0.55 else Kind.EXPORT, random.Random(rng.random())) for _ in range(count)]

    async def one(plan) -> None:
        async with gate:
            await _declaration_life(client, cast, tariff, stats, *plan)

    await asyncio.gather(*(one(p) for p in plans))
    return stats


def _refused(stats: DemoStats, reply: Reply) -> bool:
    if reply.ok:
        return False
    stats.refusals[reply.error_code or str(reply.status)] += 1
    return True


async def _declaration_life(client: SiteClient, cast: Cast, tariff: Tariff, stats: DemoStats, tax_code: str,
                            office: str, kind: Kind, rng: random.Random) -> None:
    token = cast.declarants[tax_code]
    created = await client.pre_declare(token, make_declaration_payload(rng, kind, tax_code, office, tariff))
    if _refused(stats, created):
        return
    number = created.body["number"]
    if rng.random() < 0.05:  # a declarant corrects the goods before registering (IDE/EDE)
        amended = await client.amend(token, number, make_declaration_payload(rng, kind, tax_code, office, tariff)["goods"])
        if _refused(stats, amended):
            return
        stats.amended += 1
        stats.examples.setdefault("amendment", f"{number} -> {amended.body['number']}")
        number = amended.body["number"]
    registered = await client.register(token, number)
    if _refused(stats, registered):
        return
    body = registered.body
    stats.lanes[body["lane"]] += 1
    stats.rules[body["lane_rule"]] += 1
    stats.decision_seconds.append(registered.seconds)
    if body["lane"] != "green":
        approve = rng.random() < 0.9
        decided = await client.decide(cast.officers[body["officer_id"]], number, "approve" if approve else "reject",
                                      None if approve else "invoice value does not match the contract")
        if _refused(stats, decided):
            return
        body = decided.body
    if body["state"] == "awaiting_payment":
        paid = await client.pay(token, number, body["total_vnd"] - body["paid_vnd"])
        if _refused(stats, paid):
            return
        body = paid.body
    stats.final_states[body["state"]] += 1
