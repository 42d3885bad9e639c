"""HoldQueue is pure asyncio: these tests park real tasks and wake them; no clock assertions."""
import asyncio

import pytest

from standby.api.hold import HoldQueue, HoldResult


def run(coro):
    return asyncio.run(coro)


async def _until_held(queue: HoldQueue, n: int) -> None:
    while queue.held < n:
        await asyncio.sleep(0)


def test_release_all_wakes_every_held_caller_in_arrival_order():
    async def main():
        queue, resumed = HoldQueue(), []

        async def client(i):
            result = await queue.hold(max_wait_s=30, max_count=100)
            resumed.append(i)  # runs as soon as this task resumes: the order of resumption
            return result

        tasks = []
        for i in range(20):
            tasks.append(asyncio.create_task(client(i)))
            await _until_held(queue, i + 1)
        assert queue.release_all() == 20
        results = await asyncio.gather(*tasks)
        return results, resumed, queue.held

    results, resumed, held_after = run(main())
    assert results == [HoldResult.RELEASED] * 20
    assert resumed == list(range(20))
    assert held_after == 0


def test_a_caller_held_past_its_bound_times_out_and_leaves_the_queue():
    async def main():
        queue = HoldQueue()
        result = await queue.hold(max_wait_s=0.01, max_count=10)
        return result, queue.held, queue.release_all()

    assert run(main()) == (HoldResult.TIMED_OUT, 0, 0)


def test_a_caller_over_the_count_bound_is_refused_full_without_waiting():
    async def main():
        queue = HoldQueue()
        first = [asyncio.create_task(queue.hold(30, max_count=2)) for _ in range(2)]
        await _until_held(queue, 2)
        third = await queue.hold(30, max_count=2)
        queue.release_all()
        return third, await asyncio.gather(*first)

    third, first = run(main())
    assert third is HoldResult.FULL
    assert first == [HoldResult.RELEASED, HoldResult.RELEASED]


def test_cancel_all_wakes_held_callers_with_the_reason():
    async def main():
        queue = HoldQueue()
        tasks = [asyncio.create_task(queue.hold_detailed(30, 10)) for _ in range(3)]
        await _until_held(queue, 3)
        woken = queue.cancel_all("fenced")
        return woken, await asyncio.gather(*tasks)

    woken, held = run(main())
    assert woken == 3
    assert [h.result for h in held] == [HoldResult.CANCELLED] * 3
    assert [h.reason for h in held] == ["fenced"] * 3


def test_a_client_that_goes_away_leaves_the_queue_and_is_not_released():
    async def main():
        queue = HoldQueue()
        gone = asyncio.create_task(queue.hold(30, 10))
        stays = asyncio.create_task(queue.hold(30, 10))
        await _until_held(queue, 2)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        held_then = queue.held
        return held_then, queue.release_all(), await stays

    assert run(main()) == (1, 1, HoldResult.RELEASED)


def test_callers_arriving_after_a_release_are_held_afresh():
    async def main():
        queue = HoldQueue()
        queue.release_all()
        later = asyncio.create_task(queue.hold(30, 10))
        await _until_held(queue, 1)
        return queue.held, queue.release_all(), await later

    assert run(main()) == (1, 1, HoldResult.RELEASED)


def test_the_time_held_is_measured_with_the_injected_clock():
    ticks = iter([100.0, 102.5])

    async def main():
        queue = HoldQueue(clock=lambda: next(ticks))
        task = asyncio.create_task(queue.hold_detailed(30, 10))
        await _until_held(queue, 1)
        queue.release_all()
        return await task

    held = run(main())
    assert held.result is HoldResult.RELEASED and held.waited_s == 2.5


def test_on_change_reports_every_change_of_the_held_count():
    async def scenario():
        seen: list[int] = []
        queue = HoldQueue(on_change=seen.append)
        first = asyncio.create_task(queue.hold(10, 5))
        second = asyncio.create_task(queue.hold(10, 5))
        timed_out = asyncio.create_task(queue.hold(0.01, 5))
        await asyncio.sleep(0.05)
        assert queue.held == 2
        queue.release_all()
        await asyncio.gather(first, second, timed_out)
        return seen

    assert asyncio.run(scenario()) == [1, 2, 3, 2, 0]
