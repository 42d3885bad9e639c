"""The watch's Prometheus metrics, in a registry of its own (several watches can live in one test process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge

from cutover.watch.decide import Decision


class WatchMetrics:
    def __init__(self, site: str):
        self.registry = r = CollectorRegistry()
        self.decision = Enum("watch_decision", "The watch's last decision about the primary (1 for the current one)",
                             ["site"], states=[d.value for d in Decision], registry=r).labels(site)
        self.failovers = Counter("watch_failovers_total", "Automatic failovers this watch started, by the run's "
                                                          "outcome", ["site", "outcome"], registry=r)
        self.primary_failures = Gauge("watch_primary_failed_checks", "Consecutive failed health checks of the "
                                                                     "primary", ["site"], registry=r).labels(site)
        self.checks = Counter("watch_health_checks_total", "Health checks of the primary, by result",
                              ["site", "result"], registry=r)
        self.site = site

    def failover(self, outcome: str) -> None:
        self.failovers.labels(self.site, outcome).inc()

    def checked(self, ok: bool, failures: int) -> None:
        self.checks.labels(self.site, "ok" if ok else "failed").inc()
        self.primary_failures.set(failures)
