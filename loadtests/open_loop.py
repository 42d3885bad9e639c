"""Open-loop load: declarations arrive at a fixed rate whatever the server does, so saturation shows as latency
and a falling achieved rate rather than as a politely slower client. Each declaration is pre-declared and then
registered (the registration's answer carries the lane decision)."""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from loadtests.client import SiteClient


@dataclass
class StepResult:
    offered_per_s: float
    seconds: float
    started: int = 0
    completed: int = 0
    shed: int = 0  # arrivals not sent because max_in_flight was reached: the client side saturated
    errors: Counter = field(default_factory=Counter)
    decision_s: list[float] = field(default_factory=list)
    green_decision_s: list[float] = field(default_factory=list)
    predeclare_s: list[float] = field(default_factory=list)
    lanes: Counter = field(default_factory=Counter)
    wall_s: float = 0.0

    @property
    def achieved_per_s(self) -> float:
        """Completed declarations over the offered window, or over the time taken when that ran longer."""
        window = max(self.wall_s, self.seconds)
        return self.completed / window if window else 0.0

    @property
    def error_rate(self) -> float:
        attempts = self.completed + sum(self.errors.values())
        return sum(self.errors.values()) / attempts if attempts else 0.0

    def pct(self, p: float, which: str = "decision") -> float:
        """Percentile p of 'decision' (every registration), 'green' (green-lane registrations) or 'pre'."""
        data = sorted({"decision": self.decision_s, "green": self.green_decision_s}.get(which, self.predeclare_s))
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(p / 100 * len(data)))]

    def as_dict(self) -> dict:
        return {"offered_declarations_per_s": round(self.offered_per_s, 2),
                "achieved_declarations_per_s": round(self.achieved_per_s, 2),
                "achieved_requests_per_s": round(2 * self.achieved_per_s, 2),
                "completed": self.completed, "shed": self.shed, "errors": dict(self.errors),
                "decision_ms": {f"p{p}": round(self.pct(p) * 1000, 2) for p in (50, 95, 99)},
                "green_decision_ms": {f"p{p}": round(self.pct(p, "green") * 1000, 2) for p in (50, 95, 99)},
                "predeclare_ms": {f"p{p}": round(self.pct(p, "pre") * 1000, 2) for p in (50, 95, 99)},
                "lanes": dict(self.lanes)}


async def run_step(client: SiteClient, tokens: Sequence[tuple[str, dict]], rate: float, seconds: float,
                   max_in_flight: int = 1000) -> StepResult:
    """Offer `rate` declarations/s for `seconds`. `tokens` pairs a declarant token with a ready payload; they are
    used round-robin. Waits for every started declaration to finish before returning."""
    result = StepResult(rate, seconds)
    in_flight: set[asyncio.Task] = set()
    interval, t0 = 1.0 / rate, time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        delay = t0 + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_in_flight:
            result.shed += 1
            continue
        token, payload = tokens[i % len(tokens)]
        task = asyncio.create_task(_one(client, token, payload, result))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        result.started += 1
    if in_flight:
        await asyncio.gather(*in_flight)
    result.wall_s = time.perf_counter() - t0
    return result


async def _one(client: SiteClient, token: str, payload: dict, result: StepResult) -> None:
    try:
        made = await client.pre_declare(token, payload)
        if not made.ok:
            result.errors[made.error_code or str(made.status)] += 1
            return
        result.predeclare_s.append(made.seconds)
        registered = await client.register(token, made.body["number"])
    except Exception as exc:  # a transport failure counts as an error of the run, not a crash of the bench
        result.errors[type(exc).__name__] += 1
        return
    if registered.ok:
        result.completed += 1
        result.decision_s.append(registered.seconds)
        result.lanes[registered.body["lane"]] += 1
        if registered.body["lane"] == "green":
            result.green_decision_s.append(registered.seconds)
    elif registered.error_code == "enterprise_blocked":
        result.completed += 1  # a correct refusal is a decision too
        result.decision_s.append(registered.seconds)
        result.lanes["refused"] += 1
    else:
        result.errors[registered.error_code or str(registered.status)] += 1
