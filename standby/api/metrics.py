"""The site's Prometheus metrics, in a registry of its own so several sites can live in one process (tests).

A site served by several HTTP processes (standby.http_processes) uses prometheus-client's multiprocess mode: each
process writes its values to files in one folder, and a scrape of any process reads them all (`exposition`), so one
scrape shows the whole site. Counters and histograms are summed over the processes; each gauge says how its
processes' values combine (`multiprocess_mode`: the newest value for what every process reads from the site's
database, the sum over live processes for what each holds).
"""
from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from standby.api.sync import SyncMode
from standby.domain.states import IntakeState, SiteRole

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


def share_between_processes(folder: Path) -> None:
    """Put this process, and the processes it starts afterwards (they inherit the environment), in prometheus-client's
    multiprocess mode with `folder` (which must exist and be empty): metrics created from now on write there. The
    library reads PROMETHEUS_MULTIPROC_DIR when it is imported, which in this process happened long before; setting its
    value class is what makes the metrics this process creates afterwards (the lease keeper's) shared too."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    values.ValueClass = values.MultiProcessValue()


def forget_process(folder: Path, pid: int) -> None:
    """A process of the site exited: its live gauges (requests held now) no longer count."""
    mark_process_dead(pid, str(folder))


class SiteMetrics:
    def __init__(self, site_id: str, shared_folder: Path | None = None):
        self.registry = r = CollectorRegistry()
        self.site_id, self.shared_folder = site_id, shared_folder
        self.requests = Counter("clearance_requests_total", "Intake commands by operation and outcome",
                                ["op", "kind", "outcome"], registry=r)
        self.lanes = Counter("clearance_lane_decisions_total", "Lane decisions by kind, lane and deciding rule",
                             ["kind", "lane", "rule"], registry=r)
        self.decision_latency = Histogram("clearance_decision_latency_seconds",
                                          "Registration received to lane decision answered", ["lane"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.request_latency = Histogram("clearance_request_latency_seconds", "Intake command latency by operation",
                                         ["op"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("clearance_batch_size", "Commands per worker batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.errors = Counter("clearance_http_errors_total", "Refused or failed HTTP requests by status and code",
                              ["status", "code"], registry=r)
        self.worker_restarts = Counter("clearance_worker_restarts_total", "ClearanceWorker restarts seen (with several "
                                       "HTTP processes, by each process that called the restarted worker)",
                                       ["partition"], registry=r)
        self.intake_state = Gauge("clearance_intake_state", "1 for the site's current intake state",
                                  ["site", "state"], registry=r, multiprocess_mode="mostrecent")
        self.role = Gauge("clearance_site_role", "1 for the site's current role", ["site", "role"], registry=r,
                          multiprocess_mode="mostrecent")
        self.epoch = Gauge("clearance_site_epoch", "The epoch the site accepts writes under", ["site"], registry=r,
                           multiprocess_mode="mostrecent")
        # SQLite capture only (on PostgreSQL the slot's retained WAL is the replicator's metric): what a standby
        # has not yet acknowledged stays in change_log, and grows without bound if no standby consumes it.
        self.change_log_pending = Gauge("clearance_change_log_pending_rows",
                                        "Captured changes no standby has acknowledged yet (SQLite change_log)",
                                        ["site"], registry=r, multiprocess_mode="mostrecent")
        self.change_log_oldest = Gauge("clearance_change_log_oldest_seconds",
                                       "Age of the oldest captured change no standby has acknowledged (0: none)",
                                       ["site"], registry=r, multiprocess_mode="mostrecent")

        # The intake hold during a freeze: held now (set by `show_held` on every change), held in all (named _holds_:
        # a counter named clearance_intake_held_total would clash with the gauge's name), released when
        # intake opened, refused by reason (held_too_long, hold_full, or the gate's code when the site stopped
        # being primary), and the time each held request spent held.
        self.intake_held = Gauge("clearance_intake_held", "Write requests held now, waiting for intake to open",
                                 registry=r, multiprocess_mode="livesum")
        self.intake_held_total = Counter("clearance_intake_holds_total", "Write requests held during a freeze (each counted once)",
                                         registry=r)
        self.intake_released_total = Counter("clearance_intake_released_total",
                                             "Held write requests released when intake opened", registry=r)
        self.intake_hold_refused_total = Counter("clearance_intake_hold_refused_total",
                                                 "Held write requests answered 503 instead of released, by reason",
                                                 ["reason"], registry=r)
        # The primary's lease in the witness (standby.lease): seconds until its self-fencing deadline (0 once past
        # it: the site refuses writes; absent when it keeps no lease, a standby), and renewals that failed.
        self.lease_remaining = Gauge("standby_lease_remaining_seconds",
                                     "Seconds until the primary's self-fencing deadline (lease_until); 0: past it",
                                     ["site"], registry=r, multiprocess_mode="mostrecent")
        self.lease_renewal_failures = Counter("standby_lease_renewal_failures_total",
                                              "Lease renewals in the witness that failed (no answer in time)",
                                              ["site", "reason"], registry=r)
        self.intake_hold_seconds = Histogram("clearance_intake_hold_seconds",
                                             "Time a held write request spent held (latency the freeze added)",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.sync = SyncMetrics(site_id, r)

    def show_held(self, held_now: int) -> None:
        """The number of write requests this process holds now (called on every change of it)."""
        self.intake_held.set(held_now)

    def exposition(self) -> bytes:
        """The text a scrape answers: this registry's metrics, or every process's when they are shared."""
        if self.shared_folder is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self.shared_folder))
        return generate_latest(merged)

    def show_change_log(self, pending_rows: int, oldest_s: float) -> None:
        self.change_log_pending.labels(self.site_id).set(pending_rows)
        self.change_log_oldest.labels(self.site_id).set(oldest_s)

    def show_lease(self, remaining_s: float | None) -> None:
        """The lease keeper's view: seconds left before the site fences itself, None when it keeps no lease."""
        if remaining_s is None and self.shared_folder is not None:
            # a shared value cannot be removed from the other processes' view: NaN says "no lease" instead
            self.lease_remaining.labels(self.site_id).set(float("nan"))
        elif remaining_s is None:
            try:
                self.lease_remaining.remove(self.site_id)
            except KeyError:
                pass
        else:
            self.lease_remaining.labels(self.site_id).set(remaining_s)

    def lease_renewal_failed(self, reason: str) -> None:
        self.lease_renewal_failures.labels(self.site_id, reason).inc()

    def show_control(self, role: SiteRole, state: IntakeState, epoch: int) -> None:
        for s in IntakeState:
            self.intake_state.labels(self.site_id, s.value).set(1 if s is state else 0)
        for ro in SiteRole:
            self.role.labels(self.site_id, ro.value).set(1 if ro is role else 0)
        self.epoch.labels(self.site_id).set(epoch)


class SyncMetrics:
    """Synchronous mode (standby.api.sync): whether acknowledgements wait for the standby, how often the standby was
    lost, what the wait costs, and how many committed-position reads the rounds made (one per round, shared)."""

    def __init__(self, site_id: str, r: CollectorRegistry):
        self.site_id = site_id
        self.mode = Gauge("standby_sync_mode", "1 while writes are acknowledged only once the standby applied them, "
                                               "0 while degraded to async or blocked", ["site", "standby"], registry=r,
                          multiprocess_mode="livemin")
        self.state = Gauge("standby_sync_state", "1 for the synchronous mode's current state (sync, degraded, "
                                                 "blocked)", ["site", "standby", "state"], registry=r,
                           multiprocess_mode="livemax")
        self.lost = Counter("standby_sync_lost_total", "Times the standby did not apply within standby_timeout_s, by "
                                                       "what followed (degrade to async, or block)",
                            ["site", "standby", "action"], registry=r)
        self.wait = Histogram("standby_sync_wait_seconds", "Time a write's answer waited for the standby to apply it",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.rounds = Counter("standby_sync_rounds_total", "Committed-position reads (one per round of waiting "
                                                           "writes)", registry=r)

    def show_mode(self, standby: str, mode: SyncMode) -> None:
        self.mode.labels(self.site_id, standby).set(1 if mode is SyncMode.SYNC else 0)
        for state in SyncMode:
            self.state.labels(self.site_id, standby, state.value).set(1 if mode is state else 0)

    def standby_lost(self, standby: str, action: str) -> None:
        self.lost.labels(self.site_id, standby, action).inc()

    def observe_wait(self, seconds: float) -> None:
        self.wait.observe(seconds)

    def round_read(self) -> None:
        self.rounds.inc()
