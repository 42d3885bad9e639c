"""Synchronous mode (settings.sync): a primary acknowledges a write only once its standby has applied it, so an
acknowledged write survives the primary's loss (RPO 0).

Contract of `SyncGate`:
- `confirm()` is awaited after a write's outcome is known and before it is answered. Waiting writes are grouped: one
  round reads the primary's last committed position once (`committed()`) for every write that finished before the
  read began, then looks at the standby's applied position (`applied()`, every `poll_ms`) and releases the whole group
  (CONFIRMED) once `applied >= committed`. So the cost is shared: one committed read per round (on PostgreSQL each
  read writes a logical message), never one per request, and at most one round starts per `poll_ms`.
- When the oldest waiting write has waited `standby_timeout_s` the standby counts as lost, and `on_standby_lost`
  applies to every waiting write: `degrade` answers them DEGRADED (acknowledge: the write is on the primary only) and
  later writes are acknowledged at once; `block` answers them UNAVAILABLE (503 sync_standby_unavailable; the write
  stays committed and a retry with the same Idempotency-Key returns its answer once the standby has applied it) and
  later writes are refused before they are carried out. Either way the `standby_sync_*` metrics and a WARNING log
  name the standby and its lag, and a background look (committed read, then applied polled) returns the gate to SYNC
  once the standby has applied what the primary had committed (logged).
- Only a write that wrote something waits (`needs_confirmation`); reads never come here.
- The gate never decides whether the site is primary: `acknowledged(...)` asks the caller's `primary()` first.
`committed` and `applied` are blocking calls (databases) and run in a thread each; an `applied()` that fails or hangs
counts as "not applied yet", a `committed()` that fails is tried again next poll (both count against the timeout).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from tenacity import AsyncRetrying, retry_if_result, stop_never, wait_fixed

from standby.api.errors import ApiError
from standby.clearance.commands import Outcome
from standby.domain.errors import IllegalTransition
from standby.settings import SyncSettings

log = logging.getLogger(__name__)
UNAVAILABLE_CODE = "sync_standby_unavailable"
# While degraded or blocked the standby is looked at this often at most (it is behind or gone: no one waits for it,
# and a dead standby's database should not be polled every few milliseconds).
RECOVERY_POLL_S = 0.1


class SyncPositions(Protocol):
    """The two questions of synchronous mode, answered by the composition root (replication.progress): the primary's
    last committed position, and the standby's applied position of the stream primary -> standby (None: no such
    stream on the standby). Both may block; both are asked only while the site is primary."""

    def committed(self) -> int: ...

    def applied(self) -> int | None: ...


class SyncMode(str, Enum):
    SYNC = "sync"  # writes wait for the standby
    DEGRADED = "degraded"  # the standby was lost; writes are acknowledged without it (async) until it catches up
    BLOCKED = "blocked"  # the standby was lost; writes are refused until it catches up


SYNC_TRANSITIONS: frozenset[tuple[SyncMode, SyncMode]] = frozenset({
    (SyncMode.SYNC, SyncMode.DEGRADED),  # standby lost, on_standby_lost: degrade
    (SyncMode.SYNC, SyncMode.BLOCKED),  # standby lost, on_standby_lost: block
    (SyncMode.DEGRADED, SyncMode.SYNC),  # the standby caught up
    (SyncMode.BLOCKED, SyncMode.SYNC),
})


def next_sync_mode(current: SyncMode, target: SyncMode) -> SyncMode:
    if (current, target) not in SYNC_TRANSITIONS:
        raise IllegalTransition("synchronous mode", current, target)
    return target


class Confirmation(str, Enum):
    CONFIRMED = "confirmed"  # the standby has applied the write
    NOT_REQUIRED = "not_required"  # nothing to wait for (the write wrote nothing, or the site is not a sync primary)
    DEGRADED = "degraded"  # acknowledged without the standby (degraded to async)
    UNAVAILABLE = "unavailable"  # not acknowledged: the standby is lost and the settings say block


def lost_mode(on_standby_lost: str) -> SyncMode:
    """Pure: the mode a lost standby puts the gate in."""
    return SyncMode.BLOCKED if on_standby_lost == "block" else SyncMode.DEGRADED


def answer_in(mode: SyncMode) -> Confirmation | None:
    """Pure: how a write is answered at once in `mode`; None: it waits for the standby."""
    return {SyncMode.SYNC: None, SyncMode.DEGRADED: Confirmation.DEGRADED,
            SyncMode.BLOCKED: Confirmation.UNAVAILABLE}[mode]


def needs_confirmation(outcome: Outcome) -> bool:
    """Pure: whether an answer must wait for the standby. A stored answer replayed may be of a write never confirmed,
    so it waits; an accepted write and a domain refusal (its idempotency record) wrote something; a 5xx (gate
    refusal, hold, store error) wrote nothing."""
    return outcome.replayed or outcome.status < 500


def released(targets: list[int], applied: int | None) -> int:
    """Pure: how many of the waiting groups (targets in the order read, never decreasing) the standby has applied."""
    if applied is None:
        return 0
    return next((i for i, target in enumerate(targets) if target > applied), len(targets))


def lost(oldest_since: float | None, now: float, timeout_s: float) -> bool:
    """Pure: the oldest waiting write has waited the bound."""
    return oldest_since is not None and now - oldest_since >= timeout_s


@dataclass
class _Group:
    """Writes released together: every one finished before `target` (the committed position) was read."""

    target: int
    since: float  # when the oldest of them started waiting
    waiters: list[asyncio.Future]


@dataclass
class SyncGate:
    """See the module docstring. `metrics` (optional) has `show_mode(standby, mode)`, `standby_lost(standby,
    action)`, `observe_wait(seconds)` and `round_read()`; `clock` and `sleep` are injectable for tests."""

    standby: str
    settings: SyncSettings
    committed: Callable[[], int]
    applied: Callable[[], int | None]
    metrics: object | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    mode: SyncMode = SyncMode.SYNC
    _unassigned: list[tuple[asyncio.Future, float]] = field(default_factory=list)
    _groups: deque[_Group] = field(default_factory=deque)
    _tasks: dict[str, asyncio.Task] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._poll_s = self.settings.poll_ms / 1000
        # A thread of its own for each question: a standby whose database hangs then stalls only its own look (the
        # gate stops waiting for it after the bound), never the site's shared worker threads or the committed read.
        self._threads = {name: ThreadPoolExecutor(1, thread_name_prefix=f"sync-{name}")
                         for name in ("committed", "applied")}
        if self.metrics is not None:
            self.metrics.show_mode(self.standby, self.mode)

    @property
    def waiting(self) -> int:
        """Writes waiting for the standby now."""
        return len(self._unassigned) + sum(len(g.waiters) for g in self._groups)

    def refuses_writes(self) -> bool:
        """Blocked: a new write is refused before it is carried out (nothing written)."""
        return self.mode is SyncMode.BLOCKED

    async def confirm(self) -> Confirmation:
        """Wait until the standby has applied every write that finished before this call (see the module doc)."""
        answer = answer_in(self.mode)
        if answer is not None:
            return answer
        started = self.clock()
        waiter = asyncio.get_running_loop().create_future()
        self._unassigned.append((waiter, started))
        self._ensure("rounds", self._rounds)
        result = await waiter
        if result is Confirmation.CONFIRMED and self.metrics is not None:
            self.metrics.observe_wait(self.clock() - started)
        return result

    async def stop(self) -> None:
        """Stop the background tasks; writes still waiting are answered UNAVAILABLE (the site is going away)."""
        for task in self._tasks.values():
            task.cancel()
        self._answer_all(Confirmation.UNAVAILABLE)
        for thread in self._threads.values():
            thread.shutdown(wait=False, cancel_futures=True)

    # -- rounds --------------------------------------------------------------------------------------------------
    def _ensure(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        task = self._tasks.get(name)
        if task is None or task.done():
            self._tasks[name] = asyncio.create_task(run())

    async def _rounds(self) -> None:
        """Read the committed position once for the writes waiting without one, at most once per poll; the `while`
        test and the return follow each other with no await, so a later write always finds this task running."""
        while self._unassigned and self.mode is SyncMode.SYNC:
            batch = self._unassigned
            self._unassigned = []
            try:
                target = await self._ask("committed", self.committed)
            except Exception as exc:
                self._unassigned = batch + self._unassigned
                log.warning("synchronous mode: reading the primary's committed position failed: %s", exc)
                if lost(batch[0][1], self.clock(), self.settings.standby_timeout_s):
                    self._lose(None, None)
                    return
            else:
                if self.metrics is not None:
                    self.metrics.round_read()
                if self.mode is not SyncMode.SYNC:  # lost while this read ran: answer these as the others were
                    for waiter, _ in batch:
                        _answer(waiter, answer_in(self.mode))
                    return
                self._groups.append(_Group(target, min(since for _, since in batch), [w for w, _ in batch]))
                self._ensure("poll", self._poll)
            await self.sleep(self._poll_s)

    async def _poll(self) -> None:
        retrying = AsyncRetrying(retry=retry_if_result(bool), wait=wait_fixed(self._poll_s), stop=stop_never,
                                 sleep=self.sleep)
        await retrying(self._look)

    async def _look(self) -> bool:
        """One look at the standby: release the groups it has applied; True while groups still wait."""
        if not self._groups or self.mode is not SyncMode.SYNC:
            return False
        applied = await self._applied()
        for _ in range(released([g.target for g in self._groups], applied)):
            for waiter in self._groups.popleft().waiters:
                _answer(waiter, Confirmation.CONFIRMED)
        oldest = self._groups[0].since if self._groups else None
        if self._unassigned:
            oldest = min(oldest if oldest is not None else float("inf"), self._unassigned[0][1])
        if lost(oldest, self.clock(), self.settings.standby_timeout_s):
            self._lose(self._groups[-1].target if self._groups else None, applied)
            return False
        return bool(self._groups)

    async def _applied(self) -> int | None:
        try:
            return await self._ask("applied", self.applied)
        except Exception as exc:  # the standby's database is away or hangs: not applied yet
            log.debug("synchronous mode: reading standby %s's applied position failed: %s", self.standby, exc)
            return None

    # -- lost and back -------------------------------------------------------------------------------------------
    def _lose(self, target: int | None, applied: int | None) -> None:
        if self.mode is not SyncMode.SYNC:  # the rounds and the look may both find the bound passed: once is enough
            return
        mode = lost_mode(self.settings.on_standby_lost)
        self._move(mode)
        behind = (f"{target - applied} positions behind (applied {applied}, committed {target})"
                  if target is not None and applied is not None else
                  f"applied position {'unknown' if applied is None else applied}")
        then = ("acknowledging writes without it (degraded to async)" if mode is SyncMode.DEGRADED else
                f"refusing writes with 503 {UNAVAILABLE_CODE}")
        log.warning("synchronous mode: standby %s has not applied the primary's writes within %g s, %s; %s until "
                    "it catches up", self.standby, self.settings.standby_timeout_s, behind, then)
        if self.metrics is not None:
            self.metrics.standby_lost(self.standby, "degrade" if mode is SyncMode.DEGRADED else "block")
        self._answer_all(answer_in(mode))
        self._ensure("recover", self._recover)

    async def _recover(self) -> None:
        """Until the standby has applied what the primary had committed at a look: re-read committed every
        standby_timeout_s (a dead standby costs one read per bound), poll applied every RECOVERY_POLL_S."""
        poll_s = max(self._poll_s, RECOVERY_POLL_S)
        looks = max(1, round(self.settings.standby_timeout_s / poll_s))
        while self.mode is not SyncMode.SYNC:
            try:
                target = await self._ask("committed", self.committed)
            except Exception as exc:
                log.warning("synchronous mode: reading the primary's committed position failed: %s", exc)
                await self.sleep(poll_s)
                continue
            for _ in range(looks):
                applied = await self._applied()
                if applied is not None and applied >= target:
                    self._move(SyncMode.SYNC)
                    # a warning like the loss it ends, so whoever saw one in the log sees the other
                    log.warning("synchronous mode: standby %s caught up (applied %d, committed %d); writes wait "
                                "for it again", self.standby, applied, target)
                    return
                await self.sleep(poll_s)

    async def _ask(self, name: str, question: Callable[[], int | None]) -> int | None:
        """`question()` in its own thread, given up (TimeoutError) after standby_timeout_s."""
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._threads[name], question),
                                      self.settings.standby_timeout_s)

    def _move(self, mode: SyncMode) -> None:
        self.mode = next_sync_mode(self.mode, mode)
        if self.metrics is not None:
            self.metrics.show_mode(self.standby, self.mode)

    def _answer_all(self, answer: Confirmation) -> None:
        for waiter, _ in self._unassigned:
            _answer(waiter, answer)
        self._unassigned = []
        while self._groups:
            for waiter in self._groups.popleft().waiters:
                _answer(waiter, answer)


def _answer(waiter: asyncio.Future, answer: Confirmation) -> None:
    if not waiter.done():  # a client that went away cancelled its wait
        waiter.set_result(answer)


def unavailable(standby: str) -> ApiError:
    """The 503 for a write the standby did not confirm (or refused while blocked)."""
    return ApiError(503, UNAVAILABLE_CODE, f"synchronous standby {standby} has not applied the primary's writes in "
                                           f"time; a write already carried out stays committed: retry with the same "
                                           f"Idempotency-Key for its answer once the standby has caught up",
                    headers={"Retry-After": "1"})


async def acknowledged(gate: SyncGate | None, carry_out: Callable[[], Awaitable[Outcome]],
                       primary: Callable[[], bool]) -> Outcome:
    """Carry a write out and, when `gate` is set and the site is primary (`primary()`, asked after the write: the
    first write of a process is what reads the site's role), answer it only once the standby has applied it: refused
    first while blocked (nothing carried out), ApiError 503 sync_standby_unavailable when the standby is lost under
    `block`, acknowledged as is under `degrade`."""
    if gate is None:
        return await carry_out()
    if gate.refuses_writes() and primary():
        raise unavailable(gate.standby)
    outcome = await carry_out()
    if needs_confirmation(outcome) and primary() and await gate.confirm() is Confirmation.UNAVAILABLE:
        raise unavailable(gate.standby)
    return outcome
