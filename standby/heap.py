"""The cyclic garbage collector in the site's long-running processes: one place decides when it may run.

Two measured costs, two rules:

- **Startup objects, frozen.** An HTTP process or a Ray worker holds ~100,000-150,000 long-lived objects once it has
  imported Ray, SQLAlchemy, FastAPI and built the site. Every full collection walks them all. At 12x design (two
  sites, the replicator and Locust on 2 cores) a full collection held an HTTP process of site A for 217-289 ms,
  every request in flight on it waiting, 3-4 times in 90 s; a ClearanceWorker for 60 ms. After `freeze_startup_heap`
  the same runs' full collections took 20-37 ms, and the workers had none. Frozen objects are never collected: only
  what was built to last (modules, the app, engines, pools) may be alive when it is called.
- **A window of changes, collection paused.** A window is tens of thousands of short-lived objects (a change, its
  key and row, the parser's lists) that all stay alive until the window is applied, so they outlive the young
  generations and every few windows trigger a full collection. Measured on the PostgreSQL catch-up (2 cores, 113,190
  changes): the replicator's driver spent 3.85 CPU-s with collection on and 2.16 with it off, 16,174 against 28,523
  changes/s. Nothing in a window forms a reference cycle, so reference counting frees it all the same; the collector
  runs again between windows and takes whatever cycles other code made meanwhile.
"""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


def freeze_startup_heap() -> None:
    """Collect once, then move every object alive into the permanent generation, which collections skip. Call it
    when a process has finished starting and before it takes work; calling it again freezes what has been built since.
    """
    gc.collect()
    gc.freeze()


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic collection inside the block (reference counting still frees); collection is back as it was on
    leaving, also on an exception. Nests: an inner block leaves it off for the outer one."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()
