"""The switchover bench's deployment (standbyctl bench switchover): sites A and B, the front and the replicators each
in its own process on this machine, one witness, the sites' Ray actors on one Ray this process starts, the databases
set up through the witness as an operator would (`db upgrade`, `seed`, `replicate`). Every process logs to a file in
the work folder; `Deployment.stop()` ends all of them, the PostgreSQL clusters and the Ray."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports on 127.0.0.1, held open together while chosen (asked one at a time, the same port
    can come back twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


LEFTOVERS = "processes.json"  # in the work folder: what a run started and has not stopped yet


class Deployment:
    """The bench's processes (sites, front, Locust; the replicators through their pid files) and the settings file
    they share. `stop()` ends every one of them, the clusters and the Ray cluster; safe to call twice. What it has
    started is kept in the work folder's processes.json until `stop()`, so a run killed with -9 leaves a list a later
    run stops first (`stop_leftovers`)."""

    def __init__(self, workdir: Path, log):
        self.workdir, self.log = workdir, log
        self.config = workdir / "bench.yaml"
        self.procs: dict[str, subprocess.Popen] = {}
        self.clusters: list = []
        self.started_ray = False
        self.operator = "bench"  # the operator identity the runbooks it launches run under

    def cli_args(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "standbyctl.cli", "--config", str(self.config), *args]

    def run(self, *args: str, timeout_s: float = 900) -> str:
        """Run one standbyctl command to its end; raise RuntimeError with its output's tail if it fails."""
        done = subprocess.run(self.cli_args(*args), capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"`standbyctl {' '.join(args)}` exited {done.returncode}: "
                               f"{(done.stdout + done.stderr)[-1500:]}")
        return done.stdout

    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        out = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=self.workdir)
        self.procs[name] = proc
        self.record()
        return proc

    def record(self) -> None:
        """Rewrite processes.json: every process group this deployment started and every PostgreSQL cluster."""
        # the command as launched, space-joined as standby.processes.command_line reads it once the process runs
        document = {"processes": [{"name": name, "pid": proc.pid, "cmdline": " ".join(map(str, proc.args))}
                                  for name, proc in self.procs.items() if proc.poll() is None],
                    "clusters": [c.describe() for c in self.clusters if c.base is not None]}
        tmp = self.workdir / f"{LEFTOVERS}.tmp"
        tmp.write_text(json.dumps(document, indent=1))
        os.replace(tmp, self.workdir / LEFTOVERS)

    def wait_http(self, name: str, url: str, timeout_s: float = 180, token: str | None = None) -> None:
        """Wait until `url` answers 200 (with `token` as bearer); RuntimeError if `name` exits or time runs out."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for attempt in Retrying(retry=retry_if_exception_type((httpx.HTTPError, AssertionError)),
                                wait=wait_fixed(0.25), stop=stop_after_delay(timeout_s), reraise=True):
            with attempt:
                proc = self.procs.get(name)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.workdir / name}.log")
                assert httpx.get(url, headers=headers, timeout=2).status_code == 200, f"{url} not ready"

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            terminate(proc.pid, proc)
        self.procs.clear()
        for pid in replicator_pids(self.workdir):
            terminate(pid, None)
        for cluster in self.clusters:
            cluster.cleanup()
        self.clusters.clear()
        if self.started_ray:
            from standby.ray_runtime import shutdown_ray

            shutdown_ray()
            self.started_ray = False
        (self.workdir / LEFTOVERS).unlink(missing_ok=True)


def stop_leftovers(workdir: Path, log) -> int:
    """Stop what a run in `workdir` started and never stopped (it was killed with -9: its processes.json is still
    there): each process group still running the command it was started with (a reused pid is left alone), the
    replicators of its pid files, and its PostgreSQL clusters (stopped, their folders removed). Returns how many
    were stopped. The Ray a run started ends with it (Ray's reaper), so it is not in the list."""
    from standby.processes import command_line
    from standby.store.pg_cluster import PgCluster, PgClusterError

    path = workdir / LEFTOVERS
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    stopped = 0
    for entry in document.get("processes", []):
        if entry.get("cmdline") and command_line(entry["pid"]) == entry["cmdline"]:
            log(f"- stopping {entry['name']} (pid {entry['pid']}), left running by an earlier run killed in {workdir}")
            terminate(entry["pid"], None, timeout_s=15)
            stopped += 1
    for pid in replicator_pids(workdir):
        terminate(pid, None, timeout_s=15)
        stopped += 1
    for described in document.get("clusters", []):
        if Path(described["base"]).exists():
            log(f"- removing PostgreSQL cluster {described['base']}, left by an earlier run")
            try:
                PgCluster.adopt(described).cleanup()
            except PgClusterError as exc:
                log(f"  could not stop it: {exc}")
            stopped += 1
    path.unlink(missing_ok=True)
    return stopped


def terminate(pid: int, proc: subprocess.Popen | None, timeout_s: float = 60) -> None:
    """SIGTERM the process group `pid` leads, SIGKILL it if it has not ended within `timeout_s`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (proc.poll() is not None) if proc else not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def replicator_pids(workdir: Path) -> list[int]:
    from cutover.actions.sites import running_replicator

    return [pid for f in workdir.glob("replicate-*.pid") if (pid := running_replicator(f))]


def write_settings(dep: Deployment, base, backend: str, ray_address: str) -> None:
    """The shared settings file: sites A (digit 1) and B (digit 2), the witness, the front, Ray and tokens."""
    urls = {}
    if backend == "postgresql":
        from standby.store.pg_cluster import PgCluster

        for part in ("a", "b", "witness"):
            cluster = PgCluster(name=f"sw-{part}").start()
            dep.clusters.append(cluster)
            dep.record()
            urls[part] = cluster.create_database(f"switchover_{part}")
        dep.log(f"  PostgreSQL clusters on ports {', '.join(str(c.port) for c in dep.clusters)}")
    else:
        urls = {p: f"sqlite:///{dep.workdir / f'{p}.db'}" for p in ("a", "b", "witness")}
    ports = dict(zip(("A", "B", "front"), free_ports(3)))
    dep.config.write_text(yaml.safe_dump({
        "root": str(base.root), "data_dir": str(dep.workdir),
        "sites": {s: {"site_digit": d, "database_url": urls[s.lower()],
                      "http": {"host": "127.0.0.1", "port": ports[s]}} for s, d in (("A", 1), ("B", 2))},
        "witness_url": urls["witness"], "front": {"host": "127.0.0.1", "port": ports["front"]},
        "ray": {"address": ray_address, "workers": base.ray.workers},
        "replication": {"partitions": 2, "metrics_port": 0},  # no clash with a replicator of another deployment
        "auth": {"tokens_file": str(dep.workdir / "tokens.yaml")}, "intake": base.intake.model_dump(),
        "reference": {k: str(base.path(v)) for k, v in base.reference.model_dump().items()},
    }))


def deploy(base, workdir: Path, backend: str, enterprises_count: int, log, before_replication=None
           ) -> tuple[Deployment, object]:
    """Sites A (primary) and B (its standby, snapshotted by the replicator A → B and caught up), the front, and
    tokens for 300 declarants, all running. `before_replication(dep)`, when given, runs once A is seeded and before
    the replicator snapshots B (e.g. a bulk seed). Returns the deployment (stop it!) and its settings."""
    import ray

    from standby.ray_runtime import ensure_ray
    from standby.settings import load_settings

    stop_leftovers(workdir, log)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    dep = Deployment(workdir, log)
    try:
        dep.started_ray = ensure_ray(None, None)
        write_settings(dep, base, backend, ray.get_runtime_context().gcs_address)
        settings = load_settings(dep.config)
        log("- databases through the witness: db upgrade A (primary), db upgrade B (standby), seed A …")
        dep.run("db", "upgrade", "--site", "A", "--role", "primary", "--operator", "bench")
        dep.run("db", "upgrade", "--site", "B", "--operator", "bench")
        dep.run("seed", "--site", "A", "--enterprises", str(enterprises_count), "--officers-per-section", "2")
        dep.run("tokens", "issue-many", "--site", "A", "--declarants", "300", "--out", str(workdir / "tokens.json"),
                "--label", "bench-switchover")
        if before_replication is not None:
            before_replication(dep)
        log("- replicator A → B (snapshot, then streaming), sites A and B, the front …")
        start_forward_stream(dep, settings)
        token = json.loads((workdir / "tokens.json").read_text())["declarants"][-1]["token"]
        for site in ("A", "B"):
            dep.spawn(f"site-{site.lower()}", dep.cli_args("serve", "--site", site))
        for site in ("A", "B"):
            dep.wait_http(f"site-{site.lower()}", f"{site_url(settings, site)}/v1/site", token=token)
        dep.spawn("front", dep.cli_args("front"))
        dep.wait_http("front", f"{front_url(settings)}/readyz")
        return dep, settings
    except BaseException:
        dep.stop()
        raise


def start_forward_stream(dep: Deployment, settings) -> None:
    """The replicator A → B as the runbook starts one (its pid file in the work folder), then wait until B has
    applied everything A committed."""
    from cutover.actions.sites import Sites
    from cutover.witness import open_witness
    from replication.progress import wait_until_applied
    from replication.sources import stream_name

    sites = Sites(settings, open_witness(settings.witness_url, root=settings.root), config_path=dep.config)
    try:
        sites.start_replicator("A", "B")
        sites.wait_replicating("A", "B", timeout_s=600)
        source = sites.change_source("A", "B")
        try:
            wait_until_applied(source, sites.engine("B", writer=False), stream_name("A", "B"), timeout_s=600)
        finally:
            source.close()
    finally:
        sites.witness.close()
        sites.close()


def site_url(settings, site: str) -> str:
    http = settings.site(site).http
    return f"http://{http.host}:{http.port}"


def front_url(settings) -> str:
    return f"http://{settings.front.host}:{settings.front.port}"
