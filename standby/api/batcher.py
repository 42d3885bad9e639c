"""Groups concurrent requests for one partition into a batch: one worker call and one transaction per batch.

A partition's loop sends at most one batch at a time; what arrives while a batch is in flight forms the next one,
so batches grow with load (group commit) and a quiet system answers after at most `max_wait_s`.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from standby.clearance.commands import Command, Outcome

Send = Callable[[int, Sequence[Command]], Awaitable[list[Outcome]]]


class MicroBatcher:
    def __init__(self, send: Send, partitions: int, max_items: int = 500, max_wait_s: float = 0.002,
                 on_batch: Callable[[int], None] = lambda size: None):
        self._send, self._partitions, self._max, self._wait = send, partitions, max_items, max_wait_s
        self._on_batch = on_batch
        self._queues: list[asyncio.Queue] = []
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._queues = [asyncio.Queue() for _ in range(self._partitions)]
        self._tasks = [asyncio.create_task(self._run(p), name=f"batcher-{p}") for p in range(self._partitions)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for queue in self._queues:  # nothing accepted is dropped silently: waiting callers get an error
            while not queue.empty():
                _cmd, future = queue.get_nowait()
                if not future.done():
                    future.set_exception(ShuttingDown("the site is shutting down; retry with the same key"))
        self._tasks = []

    async def submit(self, partition: int, command: Command) -> Outcome:
        if not self._tasks:
            raise ShuttingDown("the intake is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queues[partition].put((command, future))
        return await future

    async def _run(self, partition: int) -> None:
        queue = self._queues[partition]
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self._wait
            while len(batch) < self._max:
                remaining = deadline - loop.time()
                try:
                    batch.append(queue.get_nowait() if remaining <= 0 or not queue.empty()
                                 else await asyncio.wait_for(queue.get(), remaining))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            await self._deliver(partition, batch)

    async def _deliver(self, partition: int, batch: list) -> None:
        self._on_batch(len(batch))
        try:
            outcomes = await self._send(partition, [cmd for cmd, _ in batch])
        except asyncio.CancelledError:
            for _cmd, future in batch:
                if not future.done():
                    future.set_exception(ShuttingDown("the site is shutting down; retry with the same key"))
            raise
        except Exception as exc:  # the caller maps it to a clear 503; the batch may be retried with its keys
            for _cmd, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_cmd, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)


class ShuttingDown(Exception):
    """The intake stopped before this request was carried out."""
