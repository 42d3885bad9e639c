"""Real Locust, headless, against the real served site: the users' declarations go through their whole life at
3x design, officers decide their queues, and the stats have the rows the planners' report reads."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OFFICE = "01CA"


def _tokens_file(served, path: Path) -> Path:
    declarants = served.db.active_enterprises(40)
    officers = served.db.officers_of(OFFICE, "01") + served.db.officers_of(OFFICE, "02")
    assert declarants and officers
    path.write_text(json.dumps({
        "declarants": [{"tax_code": t, "token": served.tokens.declarant(t)} for t in declarants],
        "officers": [{"officer_id": o, "office": OFFICE, "token": served.tokens.officer(o)} for o in officers],
        "offices": [OFFICE],
    }))
    return path


def _short_profile(path: Path) -> Path:
    """The repository's profile with a quicker ramp and cycle, so a 15 s run sees whole lives (rate unchanged)."""
    raw = yaml.safe_load((REPO / "config" / "loadtest.yaml").read_text(encoding="utf-8"))
    raw["steady"]["ramp_s"] = 3
    raw["declarant"]["cycle_s"] = 10
    raw["officer"]["queue_poll_s"] = 2
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.ray
def test_locust_steady_3x_against_the_served_site(served, tmp_path):
    tokens = _tokens_file(served, tmp_path / "tokens.json")
    prefix = tmp_path / "run"
    command = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / "locustfile.py"), "--headless",
               "--host", served.url, "--tokens-file", str(tokens), "--shape", "steady", "--multiplier", "3",
               "--loadtest-config", str(_short_profile(tmp_path / "loadtest.yaml")), "-t", "15s",
               "--csv", str(prefix), "--only-summary", "--stop-timeout", "3"]
    done = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    tail = f"\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    assert done.returncode == 0, tail

    with open(f"{prefix}_stats.csv", newline="") as fh:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(fh)}
    for key in (("POST", "/v1/declarations"), ("POST", "/v1/declarations/[number]/registration"),
                ("GET", "/v1/officers/me/queue"), ("POST", "/v1/declarations/[number]/decision")):
        assert key in rows, f"no {key} row in {sorted(rows)}{tail}"
        assert int(rows[key]["Request Count"]) > 0 and int(rows[key]["Failure Count"]) == 0, rows[key]
    assert int(rows[("POST", "/v1/declarations")]["Request Count"]) >= 20, rows[("POST", "/v1/declarations")]
    green = rows.get(("DECISION", "green"))
    assert green and int(green["Request Count"]) > 0 and int(green["Failure Count"]) == 0, sorted(rows)
    assert float(green["99%"]) > 0
    assert int(rows[("", "Aggregated")]["Failure Count"]) == 0
    assert "Shape test updating to" in done.stderr + done.stdout

    # the per-second latency log agrees with Locust's own table, so a plateau's p99 taken from it is Locust's p99
    from loadtests.latency_log import latency_percentile, read_latency_logs
    latency = read_latency_logs(prefix)
    counted = sum(sum(c.values()) for c in latency[("DECISION", "green")].values())
    assert counted == int(green["Request Count"])
    for p, column in ((50, "50%"), (99, "99%")):
        assert latency_percentile(latency, ("DECISION", "green"), p) == float(green[column])
