"""The replication loop: snapshot once, then stream windows of changes to the apply workers, in commit order."""
from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from replication.apply import Applier, ApplyResult
from replication.changes import Change, ChangeSource
from replication.errors import SourceUnavailable, TargetUnavailable
from standby.heap import collection_paused
from replication.heartbeat import SourceRetired
from replication.metrics import ReplicationMetrics
from replication.progress import caught_up

log = logging.getLogger(__name__)
DECLARATION_KEYS = ("base", "declaration_base")
DECLARATION_TABLES = frozenset({"declarations", "goods_lines", "officer_assignments"})


def partition_of(change: Change, partitions: int) -> int:
    """A declaration's rows (declaration, goods lines, assignments) share a partition, so one transaction's changes to
    one declaration are applied together and in order; other rows go by table and key."""
    key = change.key  # built on each use for a RowInsert (replication.pg_wal2json): once here
    if change.table in DECLARATION_TABLES:
        for name in DECLARATION_KEYS:
            if name in key:
                return zlib.crc32(str(key[name]).encode()) % partitions
    return zlib.crc32(f"{change.table}:{json.dumps(key, sort_keys=True)}".encode()) % partitions


def windows_by_partition(changes: list[Change], partitions: int, positions: dict[int, int]) -> dict[int, tuple]:
    """Each partition's share of a read window (only changes above its own position) and the window's end, which
    every partition records, so a partition with nothing in the window still moves on."""
    upto = changes[-1].position
    shares: dict[int, list[Change]] = {p: [] for p in range(partitions)}
    for change in changes:
        part = partition_of(change, partitions)
        if change.position > positions.get(part, 0):
            shares[part].append(change)
    return {p: (share, upto) for p, share in shares.items()}


@dataclass(frozen=True)
class StreamFinished:
    """What `Replicator.run` returns when its source stopped being primary and the standby has everything the
    source committed: the stream has ended for good (a later stream between the sites is prepared anew)."""

    stream: str
    retired: SourceRetired
    position: int

    def describe(self) -> str:
        return f"{self.retired.describe()}; stream {self.stream} finished at position {self.position}"


def stream_done(retired: SourceRetired | None, applied: int, committed: Callable[[], int]) -> bool:
    """Pure decision (the committed position is only asked once the source has retired): a stream ends when its
    source no longer takes writes and the standby has applied the last thing it committed."""
    return retired is not None and caught_up(applied, committed())


@dataclass
class ReplicatorOptions:
    stream: str
    partitions: int = 2
    window: int = 5000
    idle_sleep_s: float = 0.02
    heartbeat_interval_s: float = 0.2
    give_up_after_s: float = 600.0  # transient failures are retried with capped backoff for this long
    read_ahead: bool | None = None  # read the next window while the current one is applied; None: the source's
    # preference (SQLite yes; PostgreSQL no: its decoding runs on the server and competes with the apply workers)


class Replicator:
    """Contract: `run(stop)` keeps the standby's tables equal to the primary's, minus the lag, until `stop` is set;
    it returns after the current window is applied or abandoned whole (positions are stored with the rows, so the
    next start resumes exactly). Transient failures are retried with capped exponential backoff; a permanent one
    raises PermanentApplyError naming the change, and nothing after it is applied.

    `heartbeat(now)` writes the source's heartbeat and returns None, or SourceRetired when the source's control row
    no longer says serving primary (nothing written). From then on no beat is attempted, and `run` returns a
    StreamFinished (also kept in `self.finished`) as soon as the standby has applied the source's committed
    position; `run` returns None when stopped by `stop`. Without a heartbeat the source's role is never checked."""

    def __init__(self, source: ChangeSource, pool, applier: Applier, options: ReplicatorOptions,
                 metrics: ReplicationMetrics, heartbeat: Callable[[float], SourceRetired | None] | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep):
        self.source, self.pool, self.applier, self.o, self.metrics = source, pool, applier, options, metrics
        self.heartbeat, self.clock, self.sleep = heartbeat, clock, sleep
        self.positions: dict[int, int] = {}
        self.delays: list[float] | None = None  # set to a list to keep every change's commit-to-apply delay
        self.retired: SourceRetired | None = None
        self.finished: StreamFinished | None = None
        self._read_everything = False  # the last read returned less than a window: nothing more was there
        self._last_heartbeat = float("-inf")
        self._last_slot_check = float("-inf")
        self._newest_commit_at: float | None = None
        # The next window is read while the workers apply the current one (reading and applying then overlap).
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replication-read")
        self._ahead: tuple[int, Future] | None = None
        self._read_ahead = (options.read_ahead if options.read_ahead is not None
                            else getattr(source, "read_ahead", True))
        # A source may give a window whose items the apply workers build (ChangeSource: `read_window`).
        self._read_window = getattr(source, "read_window", source.read)

    # -- start ---------------------------------------------------------------------------------------------------
    def start(self, progress: Callable[[str, int], None] = lambda table, rows: None) -> bool:
        """Resume from the stored positions, or take the initial snapshot. Returns True if a snapshot was taken."""
        self.positions = self.applier.positions(self.o.stream)
        if len(self.positions) == self.o.partitions:
            return False
        if self.positions:
            raise ValueError(f"stream {self.o.stream} was set up with {len(self.positions)} partitions, not "
                             f"{self.o.partitions}; keep the same count or start a new stream")
        position, tables = self.source.snapshot()

        def counted(table: str, rows: int) -> None:
            progress(table, rows)
        total = self.applier.load_snapshot(self.o.stream, self.o.partitions, position, tables, progress=counted)
        self.metrics.snapshot_rows.inc(total)
        self.positions = {p: position for p in range(self.o.partitions)}
        log.info("stream %s: snapshot of %d rows at position %d", self.o.stream, total, position)
        return True

    # -- stream --------------------------------------------------------------------------------------------------
    def step(self) -> int:
        """Read one window and apply it. Returns the number of changes applied (0 when caught up)."""
        self._beat()
        with collection_paused():
            return self._step()

    def _step(self) -> int:
        after = min(self.positions.values())
        changes = self._read(after)
        self._read_everything = len(changes) < self.o.window
        if not changes:
            self._show_lag(caught_up=True)
            return 0
        if self._read_ahead and len(changes) >= self.o.window:  # more is waiting: fetch it during the apply
            self._ahead = (changes[-1].position, self._reader.submit(self._read_window, changes[-1].position,
                                                                      self.o.window))
        results: list[ApplyResult] = self.pool.apply(self.o.stream, windows_by_partition(
            changes, self.o.partitions, self.positions))
        applied = 0
        for r in results:
            self.positions[r.part] = r.position
            applied += r.applied
        self.source.acknowledge(min(self.positions.values()))
        now = self.clock()
        for change in changes:
            if change.committed_at:
                delay = max(0.0, now - change.committed_at)
                self.metrics.apply_delay.observe(delay)
                if self.delays is not None:
                    self.delays.append(delay)
        self._newest_commit_at = max((c.committed_at for c in changes if c.committed_at),
                                     default=self._newest_commit_at)
        self.metrics.changes_applied.inc(applied)
        self.metrics.batch_size.observe(len(changes))
        self._show_lag(caught_up=len(changes) < self.o.window)
        return applied

    def _read(self, after: int) -> list[Change]:
        """The window after `after`: the one read ahead if it starts there (a failed apply leaves the positions
        behind it, and then it is discarded), else a fresh read."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == after:
            return ahead[1].result()
        return self._read_window(after, self.o.window)

    def close(self) -> None:
        self._reader.shutdown(wait=True, cancel_futures=True)

    def run(self, stop: threading.Event) -> StreamFinished | None:
        """Stream until `stop` is set (None) or the source has retired and everything it committed is applied."""
        while not stop.is_set():
            applied = self._retrying(self.step)
            if not applied and self._retrying(
                    lambda: stream_done(self.retired, self.applied_position, self.source.committed)):
                self.finished = StreamFinished(self.o.stream, self.retired, self.applied_position)
                log.info("%s", self.finished.describe())
                return self.finished
            # Caught up, also when the last read took a few changes: the next read waits for more to gather. Read
            # again at once, a steady load became a stream of tiny windows, each a Ray call and a transaction per
            # apply worker: at 12x design the replicator and its apply workers used 34-43% of a core.
            if self._read_everything:
                stop.wait(self.o.idle_sleep_s)
        return None

    def _retrying(self, call: Callable):
        for attempt in Retrying(retry=retry_if_exception_type((SourceUnavailable, TargetUnavailable)),
                                wait=wait_exponential(multiplier=0.1, max=5.0),
                                stop=stop_after_delay(self.o.give_up_after_s), reraise=True,
                                before_sleep=self._note_retry):
            with attempt:
                return call()

    def _note_retry(self, state) -> None:
        kind = type(state.outcome.exception()).__name__
        self.metrics.apply_errors.labels(self.o.stream, kind).inc()
        log.warning("stream %s: %s (attempt %d), retrying", self.o.stream, state.outcome.exception(),
                    state.attempt_number)

    def _beat(self) -> None:
        now = self.clock()
        if self.heartbeat and self.retired is None and now - self._last_heartbeat >= self.o.heartbeat_interval_s:
            beat = self.heartbeat(now)
            self._last_heartbeat = now
            if isinstance(beat, SourceRetired):  # other callables may return what they wrote (a counter, None)
                self.retired = beat
                log.info("stream %s: %s; applying what it committed, then finishing", self.o.stream,
                         self.retired.describe())

    def _show_lag(self, caught_up: bool) -> None:
        now = self.clock()
        applied = min(self.positions.values())
        head = self.source.head()
        self.metrics.applied_position.set(applied)
        self.metrics.source_position.set(head)
        self.metrics.lag_positions.set(max(0, head - applied) if not caught_up else 0)
        if self._newest_commit_at is not None:
            self.metrics.lag_seconds.set(max(0.0, now - self._newest_commit_at))
        retained = getattr(self.source, "retained_wal_bytes", None)
        if retained and now - self._last_slot_check >= 5.0:  # PostgreSQL: what the slot makes the primary keep
            self.metrics.retained_bytes.set(retained())
            self._last_slot_check = now

    @property
    def applied_position(self) -> int:
        return min(self.positions.values()) if self.positions else 0
