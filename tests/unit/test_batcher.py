"""The micro-batcher is pure asyncio; its `send` here is a plain coroutine recording what it was given."""
import asyncio

import pytest

from standby.api.batcher import MicroBatcher, ShuttingDown
from standby.clearance.commands import Command, Op, Outcome, Principal, Role

P = Principal(Role.OPERATOR, "t")


def cmd(i: int) -> Command:
    return Command(Op.PAY, P, f"k{i}", {"number": str(i)}, "01CA")


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_form_batches_and_answers_keep_order():
    sent: list[list[str]] = []

    async def send(partition, commands):
        sent.append([c.idempotency_key for c in commands])
        await asyncio.sleep(0.01)
        return [Outcome(200, {"key": c.idempotency_key}) for c in commands]

    async def main():
        batcher = MicroBatcher(send, partitions=1, max_items=50, max_wait_s=0.005)
        batcher.start()
        outcomes = await asyncio.gather(*(batcher.submit(0, cmd(i)) for i in range(120)))
        await batcher.stop()
        return outcomes

    outcomes = run(main())
    assert [o.body["key"] for o in outcomes] == [f"k{i}" for i in range(120)]
    assert max(len(b) for b in sent) == 50 and sum(len(b) for b in sent) == 120
    assert len(sent) < 120  # batched, not one call per request


def test_a_failed_send_fails_every_request_of_its_batch_and_the_next_batch_still_runs():
    calls = {"n": 0}

    async def send(partition, commands):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("worker died")
        return [Outcome(200, {}) for _ in commands]

    async def main():
        batcher = MicroBatcher(send, partitions=2, max_items=10, max_wait_s=0.05)
        batcher.start()
        first = await asyncio.gather(*(batcher.submit(0, cmd(i)) for i in range(3)), return_exceptions=True)
        second = await batcher.submit(0, cmd(9))
        await batcher.stop()
        return first, second

    first, second = run(main())
    assert all(isinstance(r, RuntimeError) for r in first)
    assert second.status == 200


def test_stop_fails_waiting_requests_instead_of_dropping_them():
    async def send(partition, commands):
        await asyncio.sleep(10)

    async def main():
        batcher = MicroBatcher(send, partitions=1, max_items=1, max_wait_s=0)
        batcher.start()
        pending = [asyncio.create_task(batcher.submit(0, cmd(i))) for i in range(3)]
        await asyncio.sleep(0.05)
        await batcher.stop()
        return await asyncio.gather(*pending, return_exceptions=True)

    results = run(main())
    assert all(isinstance(r, ShuttingDown) for r in results)


def test_submit_after_stop_is_refused():
    async def main():
        batcher = MicroBatcher(lambda p, c: None, partitions=1)
        with pytest.raises(ShuttingDown):
            await batcher.submit(0, cmd(1))

    run(main())
