"""The front's Prometheus metrics, in a registry of its own so several fronts (and sites) can live in one process."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The extra hop is a fraction of a millisecond to a few; holds last up to hold_max_s (10 s by default).
HOP_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HOLD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class FrontMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.held = Gauge("front_held_requests", "Writes the front holds now (no primary, or the primary could "
                                                 "not take them yet)", registry=r)
        self.held_total = Counter("front_held_total", "Writes the front has held", registry=r)
        self.released_total = Counter("front_released_total", "Held writes that a primary finally answered",
                                      registry=r)
        self.refused = Counter("front_refused_total", "Requests the front answered itself with 503/504, by code",
                               ["reason"], registry=r)
        self.forward_latency = Histogram("front_forward_latency_seconds",
                                         "Time the front itself adds to a forwarded request: its whole handling "
                                         "minus the site's round trip and any hold", buckets=HOP_BUCKETS, registry=r)
        self.upstream_latency = Histogram("front_upstream_latency_seconds",
                                          "One forward to a site: request sent to answer read, seen by the front",
                                          buckets=HOP_BUCKETS, registry=r)
        self.hold_seconds = Histogram("front_hold_seconds", "How long released writes were held",
                                      buckets=HOLD_BUCKETS, registry=r)
        self.forwarded = Counter("front_forwarded_total", "Site answers sent on to clients, by status class",
                                 ["status_class"], registry=r)
        self.primary_epoch = Gauge("front_primary_epoch", "The epoch of the primary the witness names", registry=r)
        self.primary_site = Gauge("front_primary_site", "1 for the site the witness names as primary",
                                  ["site"], registry=r)
        self.witness_errors = Counter("front_witness_errors_total", "Witness lookups that failed", registry=r)
        self.standby_reads = Counter("front_standby_reads_total", "Reads no primary answered, answered by another "
                                                                  "site (a standby) instead", registry=r)

    def show_primary(self, epoch: int, primary_site: str | None, sites: list[str]) -> None:
        self.primary_epoch.set(epoch)
        for site in sites:
            self.primary_site.labels(site).set(1 if site == primary_site else 0)
