"""A drill or bench killed with -9 cannot stop what it started: its processes and PostgreSQL clusters keep running.
The next run in the same folder stops them first (bench_switchover_deploy.stop_leftovers), from the processes.json
the killed run kept; a recorded pid now running something else is left alone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from standby.processes import pid_alive
from standbyctl.bench_switchover_deploy import LEFTOVERS, stop_leftovers
from tests.conftest import REPO
from tests.pg_fixtures import require_postgres

pytestmark = pytest.mark.fault

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]

RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from standbyctl.bench_switchover_deploy import Deployment
    dep = Deployment(Path(sys.argv[1]), print)
    for name in ("site-a", "front"):
        dep.spawn(name, {sleeper!r})
    if sys.argv[2] == "pg":
        from standby.store.pg_cluster import PgCluster
        dep.clusters.append(PgCluster(name="leftover").start())
        dep.record()
    print("ready", flush=True)
    time.sleep(600)
""").format(sleeper=SLEEPER)


def killed_run(workdir: Path, with_pg: bool) -> dict:
    """A run started in `workdir` and killed with -9 once it started its processes; its processes.json."""
    workdir.mkdir()
    run = subprocess.Popen([sys.executable, "-c", RUN, str(workdir), "pg" if with_pg else "-"], cwd=REPO,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline().strip() == "ready"
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    return json.loads((workdir / LEFTOVERS).read_text())


def test_the_next_run_stops_the_processes_a_killed_run_left(tmp_path):
    left = killed_run(tmp_path / "run", with_pg=False)
    pids = [p["pid"] for p in left["processes"]]
    assert len(pids) == 2 and all(pid_alive(pid) for pid in pids), "the killed run's processes should outlive it"
    said = []
    assert stop_leftovers(tmp_path / "run", said.append) == 2
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(pid) for pid in pids)
    assert not (tmp_path / "run" / LEFTOVERS).exists()
    assert any("site-a" in line and "killed" in line for line in said), said


def test_a_recorded_pid_running_something_else_is_left_alone(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # not the drill's"],
                             start_new_session=True)
    try:
        (workdir / LEFTOVERS).write_text(json.dumps({"processes": [
            {"name": "site-a", "pid": other.pid, "cmdline": "python -m standbyctl.cli serve"}],
            "clusters": []}))
        assert stop_leftovers(workdir, lambda _line: None) == 0
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_no_record_nothing_to_stop(tmp_path):
    assert stop_leftovers(tmp_path, lambda _line: None) == 0


@pytest.mark.postgres
def test_the_next_run_removes_the_postgresql_clusters_a_killed_run_left(tmp_path):
    require_postgres()
    left = killed_run(tmp_path / "run", with_pg=True)
    base = Path(left["clusters"][0]["base"])
    postmaster = int((base / "data" / "postmaster.pid").read_text().split()[0])
    assert pid_alive(postmaster)
    try:
        assert stop_leftovers(tmp_path / "run", lambda _line: None) == 3
        assert not base.exists() and not pid_alive(postmaster)
    finally:
        if pid_alive(postmaster):
            os.kill(postmaster, signal.SIGKILL)
        for entry in left["processes"]:
            if pid_alive(entry["pid"]):
                os.killpg(entry["pid"], signal.SIGKILL)
