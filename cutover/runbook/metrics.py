"""Prometheus metrics of a runbook run, served by the runbook's own process while it runs (`--metrics-port`).

Names, types and labels are the ones the Grafana dashboard's Runbooks row and the alert rules use
(config/grafana/README.md "Runbook metrics"); change them together.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

FREEZE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class RunbookMetrics:
    def __init__(self, runbook: str, operator: str, steps_total: int):
        self.registry = r = CollectorRegistry()
        self.runbook, self.operator = runbook, operator
        self.state = Gauge("runbook_state", "1 while this runbook runs under this operator, 0 otherwise",
                           ["runbook", "operator"], registry=r)
        self.step_index = Gauge("runbook_step_index", "index of the current step (1-based; 0 before the first)",
                                ["runbook"], registry=r)
        self.steps_total = Gauge("runbook_steps_total", "number of steps in the runbook", ["runbook"], registry=r)
        self.freeze = Histogram("runbook_freeze_seconds", "how long intake stayed frozen during one freeze of a "
                                "runbook (reported by the action that resumes intake)", buckets=FREEZE_BUCKETS,
                                registry=r)
        self.step_duration = Histogram("runbook_step_duration_seconds", "duration of a runbook step, action and "
                                       "verify, every attempt included", ["runbook", "step"],
                                       buckets=STEP_BUCKETS, registry=r)
        self.step_started = Gauge("runbook_step_started_timestamp_seconds", "Unix time the current step started "
                                  "(0 between steps)", ["runbook"], registry=r)
        self.step_timeout = Gauge("runbook_step_timeout_seconds", "the current step's timeout times its attempts "
                                  "plus waits: how long it may run at most", ["runbook"], registry=r)
        self.steps_total.labels(runbook).set(steps_total)
        self.step_index.labels(runbook).set(0)
        self.step_started.labels(runbook).set(0)
        self.step_timeout.labels(runbook).set(0)
        self.state.labels(runbook, operator).set(0)

    def running(self, on: bool) -> None:
        self.state.labels(self.runbook, self.operator).set(1 if on else 0)

    def step_begins(self, index: int, started_at: float, budget_s: float) -> None:
        self.step_index.labels(self.runbook).set(index + 1)
        self.step_started.labels(self.runbook).set(started_at)
        self.step_timeout.labels(self.runbook).set(budget_s)

    def step_ends(self, step_id: str, duration_s: float) -> None:
        self.step_duration.labels(self.runbook, step_id).observe(duration_s)
        self.step_started.labels(self.runbook).set(0)

    def observe_freeze(self, seconds: float) -> None:
        self.freeze.observe(seconds)
