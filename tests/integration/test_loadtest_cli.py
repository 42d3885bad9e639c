"""`standbyctl loadtest` as a planner runs it: a real site serving over HTTP with its own tokens file, the command in
its own process driving real Locust, then the verdicts, the report and the run's tokens revoked.

Latency SLOs are not asserted to pass here (the test machine is shared and noisy: that is BENCHMARKS.md's job); the
exit code must agree with the verdicts printed, and the error-rate SLO, which is about correctness, must pass."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from standby.api.auth import read_tokens_file
from tests.conftest import REPO, make_site_db

pytestmark = pytest.mark.ray

VERDICT = re.compile(r"^\s+(PASS|FAIL|not measured)\s+(\w+):", re.MULTILINE)


@pytest.fixture(scope="module")
def site(tmp_path_factory, org, ray_session):
    """Site A served in this process with the tokens file from its settings (reloaded as the CLI issues)."""
    from standby.site_process import BackgroundServer, build_site

    folder = tmp_path_factory.mktemp("loadtest-site")
    db = make_site_db(folder, org, enterprises_count=1500, officers_per_section=2)
    built = build_site(db.settings, db.site_id)
    http = db.settings.site(db.site_id).http
    server = BackgroundServer(built.app, http.host, http.port).start()
    yield db, folder / f"settings-{db.site_id}.yaml"  # the settings file make_site_db wrote
    server.stop()
    built.close()


def _profile(tmp_path: Path, **changes) -> Path:
    """The repository's profile with quicker cycles, so a short run sees whole lives (rates unchanged)."""
    raw = yaml.safe_load((REPO / "config" / "loadtest.yaml").read_text(encoding="utf-8"))
    raw["steady"]["ramp_s"] = 3
    raw["declarant"]["cycle_s"] = 10
    raw["officer"]["queue_poll_s"] = 2
    for section, values in changes.items():
        raw[section].update(values)
    path = tmp_path / "loadtest.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _loadtest(site, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    (db, config), out = site, tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "standbyctl.cli", "--config", str(config), "loadtest",
                           "--site", db.site_id, "--declarants", "60", "--out", str(out), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    return done, out


def _check_run(done: subprocess.CompletedProcess, out: Path, site) -> dict[str, str]:
    tail = f"\nstdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    verdicts = {name: mark for mark, name in VERDICT.findall(done.stdout)}
    assert set(verdicts) == {"green_decision_p99_ms", "error_rate_max", "replication_lag_p99_ms",
                             "freeze_max_s"}, tail
    assert done.returncode == (1 if "FAIL" in verdicts.values() else 0), tail
    assert verdicts["error_rate_max"] == "PASS", tail
    assert verdicts["green_decision_p99_ms"] in ("PASS", "FAIL"), tail  # measured, whatever the machine's speed
    assert "Traceback" not in done.stdout + done.stderr, tail
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "green_decision_p99_ms" in report and list(out.glob("*.png")), sorted(p.name for p in out.iterdir())
    assert list(out.glob("run_latency.*.csv")), "no per-second latency log beside Locust's CSVs"
    assert re.search(r"revoked the run's \d+ tokens", done.stdout), tail
    db = site[0]
    left = [e for e in read_tokens_file(db.settings.path(db.settings.auth.tokens_file)).get("tokens", [])
            if str(e.get("label", "")).startswith("loadtest-")]
    assert left == [], f"{len(left)} load-test tokens left in the tokens file"
    return verdicts


def test_a_steady_3x_run_judges_reports_and_revokes_its_tokens(site, tmp_path):
    done, out = _loadtest(site, tmp_path, "--multiplier", "3", "--duration", "6s",
                          "--loadtest-config", str(_profile(tmp_path)))
    _check_run(done, out, site)
    assert "Locust: steady at 3x design for 6s" in done.stdout


def test_the_spike_over_two_locust_worker_processes(site, tmp_path):
    """The first-day-after-cutover spike, scaled down (300 declarations in a 5 s burst between 2 s at 1x), with
    --workers 2: both worker processes generate load and write their latency logs."""
    profile = _profile(tmp_path, spike={"declarations": 300, "window_hours": 12, "compression": 8640,
                                        "before_s": 2, "after_s": 2, "ramp_s": 1})
    done, out = _loadtest(site, tmp_path, "--shape", "spike", "--duration", "9s", "--workers", "2",
                          "--loadtest-config", str(profile))
    _check_run(done, out, site)
    log = (out / "locust.log").read_text()
    assert "spike" in log.lower() or "Shape test updating to" in log, log[-3000:]
    assert len(list(out.glob("run_latency.*.csv"))) >= 2, "each Locust worker writes its own latency log"


def test_a_step_ramp_reports_each_step_and_the_knee(site, tmp_path):
    profile = _profile(tmp_path, step={"start_multiplier": 1, "step": 2, "step_s": 5, "max_multiplier": 5,
                                       "ramp_s": 2})
    done, out = _loadtest(site, tmp_path, "--shape", "step", "--duration", "15s", "--loadtest-config", str(profile))
    tail = f"\nstdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    steps = re.findall(r"^  step (\d+\.\d)x design .*: green p99 (\d+(?:\.\d+)?) ms — (held|broke)", done.stdout,
                       re.MULTILINE)
    assert len(steps) == 3, tail
    assert [float(m) for m, _, _ in steps] == sorted(float(m) for m, _, _ in steps), tail  # the load climbs
    knee = re.search(r"^  (Knee: SLOs held up to .*|Knee below the first step.*|No knee: .*)$", done.stdout,
                     re.MULTILINE)
    assert knee, tail
    assert done.returncode == (1 if knee.group(1).startswith("Knee below") else 0), tail
    assert 'id="steps"' in (out / "report.html").read_text(encoding="utf-8")
