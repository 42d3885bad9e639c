"""Replication's Prometheus metrics, in a registry of their own."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DELAY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class ReplicationMetrics:
    def __init__(self, stream: str):
        self.registry = r = CollectorRegistry()
        labels = ["stream"]
        self.lag_seconds = Gauge("replication_lag_seconds", "Now minus the primary commit time of the newest change "
                                 "applied (heartbeats keep one recent)", labels, registry=r).labels(stream)
        self.lag_positions = Gauge("replication_lag_positions", "Source head position minus applied position",
                                   labels, registry=r).labels(stream)
        self.applied_position = Gauge("replication_applied_position", "Lowest position applied by every partition",
                                      labels, registry=r).labels(stream)
        self.source_position = Gauge("replication_source_position", "Newest committed position at the source",
                                     labels, registry=r).labels(stream)
        self.changes_applied = Counter("replication_changes_applied_total", "Row changes applied", labels,
                                       registry=r).labels(stream)
        self.apply_errors = Counter("replication_apply_errors_total", "Failed apply attempts by kind",
                                    ["stream", "kind"], registry=r)
        self.batch_size = Histogram("replication_batch_size", "Row changes per read window", labels,
                                    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000), registry=r).labels(stream)
        self.apply_delay = Histogram("replication_apply_delay_seconds", "Primary commit to standby apply, per change",
                                     labels, buckets=DELAY_BUCKETS, registry=r).labels(stream)
        self.snapshot_rows = Counter("replication_snapshot_rows_total", "Rows copied by initial snapshots", labels,
                                     registry=r).labels(stream)
        self.retained_bytes = Gauge("replication_slot_retained_wal_bytes", "WAL the primary keeps for the slot "
                                    "(PostgreSQL)", labels, registry=r).labels(stream)
