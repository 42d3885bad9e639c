"""The SRE Grafana dashboard (config/grafana/standby-clearance.json) is valid and uses only metrics that exist.

Every metric name in a PromQL expression must be exported by SiteMetrics, ReplicationMetrics, RunbookMetrics (the
runbook process's /metrics, config/grafana/README.md "Runbook metrics"), FrontMetrics or WatchMetrics.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cutover.front.metrics import FrontMetrics
from cutover.runbook.metrics import RunbookMetrics
from cutover.watch.metrics import WatchMetrics
from replication.metrics import ReplicationMetrics
from standby.api.metrics import SiteMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana" / "standby-clearance.json"
README = DASHBOARD.parent / "README.md"
METRIC = re.compile(r"\b(?:clearance|replication|runbook|standby|front|watch)_[a-z_]+")
SUFFIXES = ("", "_bucket", "_count", "_sum", "_total")

# Planned by issue 4 (the first four) and exported by RunbookMetrics under exactly these names, types and labels.
RUNBOOK_METRICS = {"runbook_state": ("gauge", {"runbook", "operator"}),
                   "runbook_step_index": ("gauge", {"runbook"}),
                   "runbook_steps_total": ("gauge", {"runbook"}),
                   "runbook_freeze_seconds": ("histogram", set()),
                   "runbook_step_duration_seconds": ("histogram", {"runbook", "step"}),
                   "runbook_step_started_timestamp_seconds": ("gauge", {"runbook"}),
                   "runbook_step_timeout_seconds": ("gauge", {"runbook"})}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # a collapsed row carries its panels
    return out


def queries(node) -> list[str]:
    """Every PromQL string anywhere in the dashboard: targets, annotations, template variables."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                found.append(value)
            elif key == "query" and isinstance(value, dict) and isinstance(value.get("query"), str):
                found.append(value["query"])
            else:
                found.extend(queries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(queries(item))
    return found


def runbook_registry():
    metrics = RunbookMetrics("switchover", "alice", 9)
    metrics.step_ends("freeze", 0.3)  # so labelled histograms have samples to collect
    metrics.observe_freeze(0.4)
    return metrics.registry


def exported_names() -> set[str]:
    names = set()
    for registry in (SiteMetrics("A").registry, ReplicationMetrics("s").registry, runbook_registry(),
                     FrontMetrics().registry, WatchMetrics("B").registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in SUFFIXES)
            names.update(sample.name for sample in family.samples)
    return names


def test_dashboard_is_valid_grafana_json(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "label_values(clearance_site_role, site)" in variables["site"]["definition"]


def test_panel_ids_are_unique(dashboard):
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), ids


def test_every_panel_has_title_description_datasource_and_target(dashboard):
    for p in all_panels(dashboard):
        assert p.get("title", "").strip(), p["id"]
        assert p.get("gridPos"), p["title"]
        if p["type"] == "row":
            continue
        assert len(p.get("description", "")) >= 40, p["title"]
        assert p.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("targets"), p["title"]
        for t in p["targets"]:
            assert t.get("expr", "").strip() and t.get("refId"), p["title"]
            assert t.get("datasource") == p["datasource"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]


def test_rows_in_order_and_all_expanded(dashboard):
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [r["title"].split()[0] for r in rows] == ["Sites", "Intake", "Latency", "Replication", "Runbooks",
                                                     "Failover"]
    assert all(not r["collapsed"] and not r["panels"] for r in rows)  # expanded rows keep panels at top level
    panels = dashboard["panels"]
    runbook_panels = panels[panels.index(rows[-2]) + 1:panels.index(rows[-1])]
    assert len(runbook_panels) >= 7 and not any("PLANNED" in p["description"] for p in runbook_panels)
    failover_panels = panels[panels.index(rows[-1]) + 1:]
    used = {name for p in failover_panels for expr in queries(p) for name in METRIC.findall(expr)}
    assert {"standby_lease_remaining_seconds", "standby_sync_mode", "watch_decision",
            "front_standby_reads_total"} <= used, used


def test_expressions_are_balanced(dashboard):
    for expr in queries(dashboard):
        for open_, close in ("()", "{}", "[]"):
            assert expr.count(open_) == expr.count(close), expr
        assert expr.count('"') % 2 == 0, expr


def test_every_metric_used_exists(dashboard):
    exported = exported_names()
    used = {name for expr in queries(dashboard) for name in METRIC.findall(expr)}
    assert used, "no metric names found in the dashboard"
    unknown = used - exported
    assert not unknown, f"metrics not exported by the sites, replication, runbooks, front or watch: {sorted(unknown)}"
    assert {n for n in used if n.startswith("runbook_")} >= {"runbook_state", "runbook_step_index",
                                                             "runbook_steps_total", "runbook_freeze_seconds_bucket",
                                                             "runbook_step_duration_seconds_sum"}


def test_runbook_metrics_are_exported_with_the_planned_names_types_and_labels():
    families = {f.name: f for f in runbook_registry().collect()}
    for name, (kind, labels) in RUNBOOK_METRICS.items():
        assert families[name].type == kind, name
        sample_labels = {k for s in families[name].samples for k in s.labels if k != "le"}
        assert sample_labels == labels, name
    buckets = {s.labels["le"] for s in families["runbook_freeze_seconds"].samples if "le" in s.labels}
    assert "2.0" in buckets


def test_readme_lists_the_runbook_metrics():
    text = README.read_text(encoding="utf-8")
    for name in RUNBOOK_METRICS:
        assert f"`{name}" in text, name


def thresholds_of(panel: dict) -> list:
    return [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]


def test_slo_threshold_lines(dashboard):
    by_title = {p["title"]: p for p in all_panels(dashboard)}
    latency = next(p for t, p in by_title.items() if t.startswith("Green-lane decision latency"))
    assert 0.1 in thresholds_of(latency)
    assert latency["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
    assert all('lane="green"' in t["expr"] for t in latency["targets"])
    lag = by_title["Replication lag (seconds)"]
    assert 0.5 in thresholds_of(lag)
    primaries = next(p for t, p in by_title.items() if t.startswith("Primaries"))
    steps = primaries["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert {"color": "red", "value": 2} in steps
    assert 'clearance_site_role{role="primary"}' in primaries["targets"][0]["expr"]
