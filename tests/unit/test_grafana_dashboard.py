"""The SRE Grafana dashboard (config/grafana/standby-clearance.json) is valid and uses only metrics that exist.

Every metric name in a PromQL expression must be exported by SiteMetrics or ReplicationMetrics, or be one of the
planned runbook metrics that the cutover work has to export under exactly these names (config/grafana/README.md).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from replication.metrics import ReplicationMetrics
from standby.api.metrics import SiteMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana" / "standby-clearance.json"
README = DASHBOARD.parent / "README.md"
METRIC = re.compile(r"\b(?:clearance|replication|runbook)_[a-z_]+")
SUFFIXES = ("", "_bucket", "_count", "_sum", "_total")

# Planned by issue 4 for the cutover work: runbook_state{runbook,operator} gauge (1 = running),
# runbook_step_index{runbook} and runbook_steps_total{runbook} gauges, runbook_freeze_seconds histogram.
PLANNED_RUNBOOK = {"runbook_state", "runbook_step_index", "runbook_steps_total", "runbook_freeze_seconds",
                   "runbook_freeze_seconds_bucket", "runbook_freeze_seconds_count", "runbook_freeze_seconds_sum"}


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


def exported_names() -> set[str]:
    names = set()
    for registry in (SiteMetrics("A").registry, ReplicationMetrics("s").registry):
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


def test_rows_in_order_and_runbooks_collapsed(dashboard):
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [r["title"].split()[0] for r in rows] == ["Sites", "Intake", "Latency", "Replication", "Runbooks"]
    runbooks = rows[-1]
    assert runbooks["collapsed"] and "PLANNED" in runbooks["title"] and runbooks["panels"]
    assert all(not r["panels"] for r in rows[:-1])  # expanded rows keep their panels at top level


def test_expressions_are_balanced(dashboard):
    for expr in queries(dashboard):
        for open_, close in ("()", "{}", "[]"):
            assert expr.count(open_) == expr.count(close), expr
        assert expr.count('"') % 2 == 0, expr


def test_every_metric_used_exists_or_is_planned(dashboard):
    exported = exported_names()
    used = {name for expr in queries(dashboard) for name in METRIC.findall(expr)}
    assert used, "no metric names found in the dashboard"
    unknown = used - exported - PLANNED_RUNBOOK
    assert not unknown, f"metrics not exported by SiteMetrics/ReplicationMetrics nor planned: {sorted(unknown)}"
    # Runbook metrics stay inside the collapsed Runbooks row until the cutover work exports them.
    runbooks_row = next(p for p in dashboard["panels"] if p["type"] == "row" and p["title"].startswith("Runbooks"))
    outside = [p for p in dashboard["panels"] if p is not runbooks_row]
    assert not any(n.startswith("runbook_") for n in METRIC.findall(" ".join(queries(outside))))


def test_readme_lists_the_planned_runbook_metrics():
    text = README.read_text(encoding="utf-8")
    for name in ("runbook_state", "runbook_step_index", "runbook_steps_total", "runbook_freeze_seconds"):
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
