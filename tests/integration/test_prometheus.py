"""The Prometheus configuration in config/prometheus: promtool validates the config and rules and runs the rule unit
tests; a real Prometheus (the system's package) scrapes a served site, answers a query and loads the rules."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.conftest import REPO, free_port

PROM_DIR = REPO / "config" / "prometheus"
RULE_FILES = [PROM_DIR / "rules" / "recording.yml", PROM_DIR / "rules" / "alerts.yml"]


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not installed (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must install it")
        pytest.skip(reason)
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)


def test_promtool_accepts_config_and_rules():
    promtool = _binary("promtool")
    config = _run(promtool, "check", "config", str(PROM_DIR / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_alert_rules_unit_tests_pass():
    promtool = _binary("promtool")
    result = _run(promtool, "test", "rules", str(PROM_DIR / "tests" / "alerts_test.yml"))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "SUCCESS" in out and "FAILED" not in out, out


def test_alerts_carry_severity_and_runbook_text():
    groups = yaml.safe_load((PROM_DIR / "rules" / "alerts.yml").read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"]}
    for name in ("ReplicationLagOverBound", "ReplicationLagCritical", "ReplicationLagGrowing",
                 "ReplicationSlotRetainingWAL", "IntakeFrozenTooLong", "TwoSitesClaimPrimary",
                 "ClearanceErrorRateHigh", "GreenDecisionLatencyP99High", "GreenDecisionSLOFastBurn",
                 "ClearanceWorkerRestarts"):
        assert name in alerts, name
    for name, rule in alerts.items():
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and "Check first" in rule["annotations"]["description"], name


def _wait_for(what: str, check, proc: subprocess.Popen, log: Path, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited with {proc.returncode} while waiting for {what}:\n{log.read_text()[-3000:]}")
        try:
            last = check()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what} (last: {last!r}):\n{log.read_text()[-3000:]}")


def test_real_prometheus_scrapes_a_served_site(served, tmp_path):
    prometheus = _binary("prometheus")
    site = urlsplit(served.url)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [{
            "job_name": "clearance", "honor_labels": True,
            "static_configs": [{"targets": [f"{site.hostname}:{site.port}"], "labels": {"site": served.db.site_id}}],
        }],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen([prometheus, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=base, timeout=5) as http:
            _wait_for("/-/ready", lambda: http.get("/-/ready").status_code == 200, proc, log)

            def epoch_sample():
                body = http.get("/api/v1/query", params={"query": "clearance_site_epoch"}).json()
                results = body["data"]["result"]
                return results if results and float(results[0]["value"][1]) == 1 else None

            results = _wait_for("clearance_site_epoch from the site", epoch_sample, proc, log)
            assert results[0]["metric"]["site"] == served.db.site_id
            assert results[0]["metric"]["job"] == "clearance"

            role = http.get("/api/v1/query", params={"query": 'clearance_site_role{role="primary"} == 1'}).json()
            assert [r["metric"]["site"] for r in role["data"]["result"]] == [served.db.site_id]

            groups = http.get("/api/v1/rules").json()["data"]["groups"]
            loaded = {g["file"] for g in groups}
            assert loaded == {str(p) for p in RULE_FILES}
            names = {r["name"] for g in groups for r in g["rules"]}
            assert {"IntakeFrozenTooLong", "ReplicationLagOverBound", "TwoSitesClaimPrimary",
                    "clearance:decision_latency_seconds:p99_5m"} <= names
            assert all(r["health"] != "err" for g in groups for r in g["rules"]), groups
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
