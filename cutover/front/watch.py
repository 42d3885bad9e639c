"""Who is primary, as the witness says: polled in a thread of its own, never on the event loop.

Contract (`PrimaryWatch`):
- `poll()` is one lookup (blocking: call it from a thread, e.g. `asyncio.to_thread`, never on the event loop).
  When the state's (epoch, primary_site) differs from the last one seen, it stores it and calls `on_change(state)`
  in the calling thread (callers hand it to their event loop with `call_soon_threadsafe`).
- `start()` starts a daemon thread that polls every `poll_s` seconds, and soon after `poke()` (pokes are coalesced
  and spaced at least `poll_s / 5` apart, so a thousand held writes asking at once cost one lookup, not a thousand).
  Lookups are serialised: a backend object is never called from two threads at once.
- `state` is the last state the witness gave (None until the first answer); reading it is a plain attribute read.
- A lookup that raises keeps the previous state (a witness that cannot be reached does not make the primary
  unknown: the sites themselves refuse writes under a stale epoch), counts in `errors` and calls `on_error()`; the
  first error of a run of errors is logged by its type only (a message could carry the witness URL's password).
- `stop()` ends the thread and waits for it.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cutover.witness.contract import WitnessState

log = logging.getLogger(__name__)


class PrimaryWatch:
    def __init__(self, lookup: Callable[[], WitnessState], poll_s: float,
                 on_change: Callable[[WitnessState], None] = lambda _s: None,
                 on_error: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.monotonic):
        self._lookup, self._poll_s, self.on_change, self.on_error = lookup, poll_s, on_change, on_error
        self._clock = clock
        self._lock = threading.Lock()
        self._last_lookup = float("-inf")
        self.state: WitnessState | None = None
        self.errors = 0
        self.lookups = 0
        self._failing = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="front-witness-watch", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Ask the witness again now rather than at the next poll (a site said it is not the primary)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def failing(self) -> bool:
        """True while the last lookup failed."""
        return self._failing

    def poll(self) -> WitnessState | None:
        """One lookup; stores and announces a changed state; returns the state now held."""
        with self._lock:
            return self._poll()

    def _poll(self) -> WitnessState | None:
        self._last_lookup = self._clock()
        try:
            fresh = self._lookup()
        except Exception as exc:  # the witness store is down or locked: keep the last known state
            self.errors += 1
            self.on_error()
            if not self._failing:
                log.warning("front: the witness did not answer (%s); routing by the last state it gave: %s",
                            type(exc).__name__, self.state)
            self._failing = True
            return self.state
        self.lookups += 1
        if self._failing:
            log.info("front: the witness answers again")
        self._failing = False
        old = self.state
        if old is None or (old.epoch, old.primary_site) != (fresh.epoch, fresh.primary_site):
            self.state = fresh
            self.on_change(fresh)
        return self.state

    def _run(self) -> None:
        while not self._stopping.is_set():
            poked = self._wake.wait(self._poll_s)
            self._wake.clear()
            if poked:  # space poked lookups out: a storm of pokes costs one lookup per gap
                time.sleep(max(0.0, self._last_lookup + self._poll_s / 5 - self._clock()))
            if not self._stopping.is_set():
                self.poll()
