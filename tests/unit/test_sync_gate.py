"""SyncGate (synchronous mode) with plain callables for the primary's committed position and the standby's applied
position, a fake clock that the gate's own sleeps advance, and the real metrics on a registry of their own."""
import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from standby.api.errors import ApiError
from standby.api.metrics import SyncMetrics
from standby.api.sync import (Confirmation, SyncGate, SyncMode, acknowledged, lost, needs_confirmation,
                              next_sync_mode, released)
from standby.clearance.commands import Outcome
from standby.domain.errors import IllegalTransition
from standby.settings import SyncSettings


class Positions:
    """The primary's committed position and the standby's applied one, as plain values a test moves."""

    def __init__(self, committed: int = 10, applied: int | None = 0):
        self.value, self.applied_value, self.committed_reads = committed, applied, 0

    def committed(self) -> int:
        self.committed_reads += 1
        return self.value

    def applied(self) -> int | None:
        return self.applied_value


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def make_gate(positions: Positions, clock: FakeClock, *, on_lost: str = "degrade", timeout_s: float = 600):
    registry = CollectorRegistry()
    gate = SyncGate("B", SyncSettings(pairs=[("A", "B")], on_standby_lost=on_lost, standby_timeout_s=timeout_s,
                                      poll_ms=2), positions.committed, positions.applied,
                    metrics=SyncMetrics("A", registry), clock=clock, sleep=clock.sleep)
    return gate, registry


async def until(condition, what: str) -> None:
    for _ in range(20_000):  # real time: each step is a loop turn or a worker-thread hop, well under a second in all
        if condition():
            return
        await asyncio.sleep(0.0005)
    raise AssertionError(f"never: {what}")


def sample(registry: CollectorRegistry, name: str, **labels) -> float | None:
    return registry.get_sample_value(name, labels)


def test_pure_rules():
    assert released([5, 7, 9], None) == 0
    assert released([5, 7, 9], 7) == 2
    assert released([5, 7, 9], 100) == 3
    assert lost(None, 10.0, 2.0) is False
    assert lost(8.0, 10.0, 2.0) is True and lost(8.5, 10.0, 2.0) is False
    assert needs_confirmation(Outcome(201, {})) and needs_confirmation(Outcome(409, {}))
    assert needs_confirmation(Outcome(503, {}, replayed=True))
    assert not needs_confirmation(Outcome(503, {"error": {"code": "not_primary"}}))
    assert next_sync_mode(SyncMode.SYNC, SyncMode.DEGRADED) is SyncMode.DEGRADED
    with pytest.raises(IllegalTransition):
        next_sync_mode(SyncMode.DEGRADED, SyncMode.BLOCKED)


def test_writes_waiting_together_share_one_committed_read_and_are_released_when_the_standby_applied_it():
    async def main():
        positions, clock = Positions(committed=10, applied=3), FakeClock()
        gate, registry = make_gate(positions, clock)
        waits = [asyncio.create_task(gate.confirm()) for _ in range(5)]
        await until(lambda: gate._groups, "a round read the committed position")
        assert not any(w.done() for w in waits)  # applied 3 < committed 10
        positions.applied_value = 9
        await clock.sleep(0.05)
        assert not any(w.done() for w in waits)
        positions.applied_value = 10
        results = await asyncio.gather(*waits)
        assert results == [Confirmation.CONFIRMED] * 5
        assert positions.committed_reads == 1
        assert sample(registry, "standby_sync_rounds_total") == 1
        assert sample(registry, "standby_sync_wait_seconds_count") == 5
        assert sample(registry, "standby_sync_mode", site="A", standby="B") == 1
    asyncio.run(main())


def test_a_write_after_the_rounds_read_waits_for_its_own_position():
    async def main():
        positions, clock = Positions(committed=10, applied=0), FakeClock()
        gate, _ = make_gate(positions, clock)
        first = asyncio.create_task(gate.confirm())
        await until(lambda: gate._groups, "the first round read 10")
        positions.value = 20  # the second write committed after that read
        second = asyncio.create_task(gate.confirm())
        await until(lambda: len(gate._groups) == 2, "the second round read 20")
        positions.applied_value = 15
        assert await first is Confirmation.CONFIRMED
        await clock.sleep(0.05)
        assert not second.done()
        positions.applied_value = 20
        assert await second is Confirmation.CONFIRMED
        assert positions.committed_reads == 2
    asyncio.run(main())


def test_degrade_acknowledges_after_the_bound_says_so_and_returns_to_sync_once_the_standby_caught_up(caplog):
    async def main():
        positions, clock = Positions(committed=40, applied=12), FakeClock()
        gate, registry = make_gate(positions, clock, on_lost="degrade", timeout_s=1.0)
        started = clock()
        waits = [asyncio.create_task(gate.confirm()) for _ in range(3)]
        assert await asyncio.gather(*waits) == [Confirmation.DEGRADED] * 3
        assert clock() - started >= 1.0  # not before the bound
        assert gate.mode is SyncMode.DEGRADED
        assert sample(registry, "standby_sync_mode", site="A", standby="B") == 0
        assert sample(registry, "standby_sync_state", site="A", standby="B", state="degraded") == 1
        assert sample(registry, "standby_sync_lost_total", site="A", standby="B", action="degrade") == 1
        assert await gate.confirm() is Confirmation.DEGRADED  # at once while degraded
        assert not gate.refuses_writes()
        positions.applied_value = 40  # the standby caught up with what the primary committed
        await until(lambda: gate.mode is SyncMode.SYNC, "back to sync")
        assert sample(registry, "standby_sync_mode", site="A", standby="B") == 1
        positions.value = 41
        again = asyncio.create_task(gate.confirm())
        await until(lambda: gate._groups, "a round read 41")
        assert not again.done()  # synchronous again: it waits for the standby
        positions.applied_value = 41
        assert await again is Confirmation.CONFIRMED

    with caplog.at_level(logging.WARNING, logger="standby.api.sync"):
        asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("standby B" in m and "28 positions behind" in m and "degraded to async" in m for m in warnings)
    assert any("standby B caught up" in m for m in warnings)


def test_block_answers_unavailable_refuses_new_writes_and_a_retry_gets_its_answer_once_the_standby_caught_up():
    async def main():
        positions, clock = Positions(committed=7, applied=None), FakeClock()  # the standby has no stream at all
        gate, registry = make_gate(positions, clock, on_lost="block", timeout_s=1.0)
        carried_out = []

        async def write(outcome: Outcome):
            async def carry_out():
                carried_out.append(outcome)
                return outcome
            return await acknowledged(gate, carry_out, primary=lambda: True)

        with pytest.raises(ApiError) as refused:
            await write(Outcome(201, {"number": "100000000001"}))
        assert (refused.value.status, refused.value.code) == (503, "sync_standby_unavailable")
        assert len(carried_out) == 1  # it was carried out (committed) but not acknowledged
        assert gate.mode is SyncMode.BLOCKED and gate.refuses_writes()
        assert sample(registry, "standby_sync_lost_total", site="A", standby="B", action="block") == 1
        with pytest.raises(ApiError) as again:
            await write(Outcome(201, {"number": "100000000002"}))
        assert again.value.code == "sync_standby_unavailable" and len(carried_out) == 1  # refused before carrying out
        positions.applied_value = 7
        await until(lambda: gate.mode is SyncMode.SYNC, "back to sync")
        replay = Outcome(201, {"number": "100000000001"}, replayed=True)
        assert await write(replay) is replay  # the retry's stored answer, once the standby has it
        assert sample(registry, "standby_sync_state", site="A", standby="B", state="sync") == 1
    asyncio.run(main())


def test_nothing_waits_where_there_is_nothing_to_confirm():
    async def main():
        positions, clock = Positions(committed=10, applied=0), FakeClock()
        gate, _ = make_gate(positions, clock, timeout_s=1.0)

        async def carry_out():
            return Outcome(503, {"error": {"code": "not_primary"}})
        assert (await acknowledged(gate, carry_out, primary=lambda: True)).status == 503  # wrote nothing
        assert (await acknowledged(gate, lambda: _ok(), primary=lambda: False)).status == 201  # not a primary
        assert (await acknowledged(None, lambda: _ok(), primary=lambda: True)).status == 201  # no partner
        assert positions.committed_reads == 0 and gate.mode is SyncMode.SYNC
    asyncio.run(main())


async def _ok() -> Outcome:
    return Outcome(201, {})
