"""A bounded, ordered hold for requests that arrive while writes cannot be carried out (a freeze, no primary).

Used by the site's API while its intake is frozen, and by the front while no primary is open. Deciding *whether*
to hold is the caller's business (the intake gate); this primitive only parks callers and wakes them.

Contract (`HoldQueue`):
- `await hold(max_wait_s, max_count)` parks the caller and returns a `HoldResult`:
  RELEASED when `release_all()` ran while it waited; TIMED_OUT when `max_wait_s` passed first; FULL at once (without
  waiting) when `max_count` callers are already held; CANCELLED when `cancel_all(reason)` ran while it waited
  (`hold_detailed` also gives the reason and how long the caller waited).
- `release_all()` wakes every held caller in arrival order (first held, first resumed on the event loop) and
  returns how many it woke; `cancel_all(reason)` does the same with CANCELLED. Callers that arrive afterwards are
  held afresh: neither call closes the queue.
- A held caller whose own task is cancelled (the client went away) leaves the queue and the CancelledError
  propagates; it is never counted as released.
- `held` is the number of callers parked now; `on_change(held)`, when given, is called each time it changes.
- Not thread-safe: every method must run on the event loop that owns the queue (from another thread, use
  `loop.call_soon_threadsafe(queue.release_all)`). Time is measured with the injected monotonic `clock`; waiting
  uses the event loop's timers.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class HoldResult(str, Enum):
    RELEASED = "released"
    TIMED_OUT = "timed_out"
    FULL = "full"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Held:
    """How one hold ended: the result, the reason given to `cancel_all` (None otherwise), and the time held."""

    result: HoldResult
    reason: object = None
    waited_s: float = 0.0


@dataclass
class _Waiter:
    future: asyncio.Future
    reason: object = None


class HoldQueue:
    """Parks callers until released, cancelled or timed out; bounded in count per call. See the module contract."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[int], None] = lambda held: None):
        self._clock, self._on_change = clock, on_change
        self._waiters: deque[_Waiter] = deque()

    @property
    def held(self) -> int:
        return len(self._waiters)

    async def hold(self, max_wait_s: float, max_count: int) -> HoldResult:
        """Park until released or cancelled, at most `max_wait_s`; FULL at once if `max_count` are already held."""
        return (await self.hold_detailed(max_wait_s, max_count)).result

    async def hold_detailed(self, max_wait_s: float, max_count: int) -> Held:
        """As `hold`, with the cancel reason and the time held."""
        if len(self._waiters) >= max_count:
            return Held(HoldResult.FULL)
        if max_wait_s <= 0:
            return Held(HoldResult.TIMED_OUT)
        started = self._clock()
        waiter = _Waiter(asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._on_change(len(self._waiters))
        try:
            # shield: a timeout must not cancel the future a concurrent release_all may be resolving
            result = await asyncio.wait_for(asyncio.shield(waiter.future), max_wait_s)
        except asyncio.TimeoutError:
            result = waiter.future.result() if waiter.future.done() else HoldResult.TIMED_OUT
        finally:
            self._discard(waiter)
        return Held(result, waiter.reason, self._clock() - started)

    def release_all(self) -> int:
        """Wake every held caller with RELEASED, in arrival order; returns how many were woken."""
        return self._wake(HoldResult.RELEASED, None)

    def cancel_all(self, reason: object = None) -> int:
        """Wake every held caller with CANCELLED and `reason`, in arrival order; returns how many were woken."""
        return self._wake(HoldResult.CANCELLED, reason)

    def _wake(self, result: HoldResult, reason: object) -> int:
        woken = 0
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.reason = reason
                waiter.future.set_result(result)  # callbacks run in the order set: arrival order
                woken += 1
        self._on_change(0)
        return woken

    def _discard(self, waiter: _Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return  # already popped by release_all / cancel_all
        self._on_change(len(self._waiters))
