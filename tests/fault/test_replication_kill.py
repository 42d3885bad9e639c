"""kill -9 of the applier at random points while the primary takes intake: the standby converges with nothing lost
or doubled (verify finds nothing)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from replication.progress import applied_position
from replication.sources import stream_name
from standby.store.engine import make_engine
from standby.store.schema import declarations
from tests.conftest import REPO, make_site_db
from tests.integration.replica import Intake, Stream, make_standby

pytestmark = pytest.mark.fault


def _config(tmp: Path, primary_url: str, standby_url: str) -> Path:
    """The replicator processes join the test session's Ray (a Ray start of their own costs seconds each); a killed
    driver's apply actors die with it, as they would with a Ray of its own."""
    import ray

    path = tmp / "replicate.yaml"
    path.write_text(yaml.safe_dump({
        "root": str(REPO), "data_dir": str(tmp),
        "sites": {"A": {"site_digit": 1, "database_url": primary_url, "http": {"port": 1}},
                  "B": {"site_digit": 2, "database_url": standby_url, "http": {"port": 2}}},
        "ray": {"address": ray.get_runtime_context().gcs_address},
    }))
    return path


def _replicate(config: Path, once: bool = False) -> subprocess.Popen:
    # Two apply workers (auto would give one into SQLite): each partition keeps its own position, and every one of
    # them must survive the kills; finish_and_verify's Stream resumes with the same two.
    cmd = [sys.executable, "-m", "standbyctl.cli", "--config", str(config), "replicate", "--from", "A", "--to", "B",
           "--metrics-port", "0", "--window", "500", "--partitions", "2"] + (["--once"] if once else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)


def _applied(standby_url: str) -> int:
    engine = make_engine(standby_url, writer=False)
    try:
        return applied_position(engine, stream_name("A", "B")) or 0
    except Exception:
        return 0
    finally:
        engine.dispose()


def kill_at_random_points(config: Path, standby_url: str, rng: random.Random, times: int,
                          longest_s: float) -> list[tuple[int, bool]]:
    """Start the replicator, let it work a random while once it has applied something, kill -9 its whole process
    group (driver + workers); `times` times. Per kill: (the process's exit status, whether it had applied
    something before the kill)."""
    kills = []
    for _ in range(times):
        proc = _replicate(config)
        deadline = time.monotonic() + 90
        start = _applied(standby_url)
        while _applied(standby_url) <= start and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        advanced = _applied(standby_url) > start
        time.sleep(rng.uniform(0.0, longest_s))
        os.killpg(proc.pid, signal.SIGKILL)
        kills.append((proc.wait(), advanced))
    return kills


def finish_and_verify(config: Path, primary_url: str, standby_url: str):
    """A last replicator run (--once) resumes the stream from its stored positions; then verify's report."""
    finisher = _replicate(config, once=True)
    out, _ = finisher.communicate(timeout=300)
    assert finisher.returncode == 0, out
    assert "resuming stream A-to-B" in out  # no second snapshot: the stored positions were kept
    stream = Stream(primary_url, standby_url)
    stream.open()
    stream.replicator.start()
    try:
        return stream.verify()
    finally:
        stream.close()


def test_kill_9_of_the_replicator_process_at_random_points(tmp_path, org, tariff, rules, ray_session):
    primary = make_site_db(tmp_path, org, enterprises_count=3000)
    standby_url = f"sqlite:///{tmp_path / 'site-b.db'}"
    make_standby(standby_url)
    config = _config(tmp_path, primary.url, standby_url)
    intake = Intake(primary.url, primary.active_enterprises(300), tariff, rules)
    intake.start(60, pause_s=0.02)
    kills = kill_at_random_points(config, standby_url, random.Random(9), times=3, longest_s=1.5)
    intake.join()
    report = finish_and_verify(config, primary.url, standby_url)
    # Each kill landed on a running replicator that had been applying: it died of SIGKILL, not of its own accord.
    assert kills == [(-signal.SIGKILL, True)] * 3, kills
    assert report.ok, "\n".join(report.summary())
    engine = make_engine(standby_url, writer=False)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(declarations)).scalar() == intake.done
    engine.dispose()


def test_kill_9_of_apply_workers_mid_stream(tmp_path, org, tariff, rules, ray_session):
    primary = make_site_db(tmp_path, org, enterprises_count=3000)
    standby_url = f"sqlite:///{tmp_path / 'site-b.db'}"
    make_standby(standby_url)
    kill_apply_workers_mid_stream(primary, standby_url, tariff, rules)


def kill_apply_workers_mid_stream(primary, standby_url: str, tariff, rules) -> None:
    """Stream under intake, kill -9 an apply worker four times, then catch up: verify finds nothing, every
    declaration is there once, and the kills were felt (retried)."""
    stream = Stream(primary.url, standby_url, window=300)
    try:
        stream.open().start()
        stream.run_in_background()
        intake = Intake(primary.url, primary.active_enterprises(300), tariff, rules)
        intake.start(40, pause_s=0.02)
        rng = random.Random(4)
        for _ in range(4):
            time.sleep(rng.uniform(0.2, 0.8))
            pids = stream.pool.pids()
            os.kill(pids[rng.randrange(len(pids))], signal.SIGKILL)
        intake.join()
        stream.catch_up(timeout_s=120)
        report = stream.verify()
        retries = sum(s.value for m in stream.replicator.metrics.apply_errors.collect() for s in m.samples
                      if s.name.endswith("_total"))
    finally:
        stream.close()
    assert report.ok, "\n".join(report.summary())
    assert report.table("declarations").rows == intake.done
    assert retries >= 1, "the kills were felt and retried"


def test_sigterm_stops_the_replicator_cleanly_and_keeps_its_position(tmp_path, org, tariff, rules, ray_session):
    primary = make_site_db(tmp_path, org, enterprises_count=2000)
    standby_url = f"sqlite:///{tmp_path / 'site-b.db'}"
    make_standby(standby_url)
    config = _config(tmp_path, primary.url, standby_url)
    Intake(primary.url, primary.active_enterprises(200), tariff, rules).run_batches(5)
    proc = _replicate(config)
    deadline = time.monotonic() + 90
    while _applied(standby_url) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped at position" in out
    kept = _applied(standby_url)
    assert kept > 0
    finisher = _replicate(config, once=True)
    again, _ = finisher.communicate(timeout=120)
    assert finisher.returncode == 0 and f"resuming stream A-to-B from position {kept}" in again, again
