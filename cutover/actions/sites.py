"""What the cutover actions act on: the sites of the settings, their databases and APIs, and the witness.

Built once by the composition root (standbyctl) and handed to the runbook engine as the actions' services. Engines
are opened on first use and kept for the run, so steps on the clock (between freeze and resume) open nothing new."""
from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
from sqlalchemy import Engine, func, select
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from cutover.runbook.actions import ActionFailed
from cutover.witness.contract import Witness
from replication.changes import ChangeSource
from replication.progress import applied_position, committed_position, wait_until_applied
from replication.sources import open_source, stream_name
from replication.verify import verify
from standby.processes import command_line, pid_alive
from standby.settings import Settings, is_sqlite_url, writers_for
from standby.store.engine import make_engine
from standby.store.schema import replication_heartbeat, replication_state
from standby.store.site import SiteControl, read_control


@dataclass
class Sites:
    settings: Settings
    witness: Witness
    config_path: Path | None = None  # for the replicator process an action may start
    partitions: int | Literal["auto"] = "auto"  # apply workers of a stream an action sets up: see partitions_into
    replicator_metrics_port: int = 0  # settings.replication.metrics_port (Prometheus scrapes 9464); 0: none
    clock: Callable[[], float] = time.time
    _engines: dict[tuple[str, bool], Engine] = field(default_factory=dict)
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=5.0))

    def database_url(self, site_id: str) -> str:
        return self.settings.database_url(site_id)

    def partitions_into(self, site_id: str) -> int:
        """The apply workers of a new stream into site `site_id`: `partitions`, or for auto what
        standby.settings.writers_for picks for its database."""
        return writers_for(self.partitions, self.database_url(site_id))

    def engine(self, site_id: str, writer: bool = True) -> Engine:
        key = (site_id, writer)
        if key not in self._engines:
            self._engines[key] = make_engine(self.database_url(site_id), writer=writer)
        return self._engines[key]

    def control(self, site_id: str) -> SiteControl:
        control = read_control(self.engine(site_id, writer=False), site_id)
        if control is None:
            raise ActionFailed(f"site {site_id} has no control row; run `standbyctl db upgrade --site {site_id}`")
        return control

    def url(self, site_id: str) -> str:
        http = self.settings.site(site_id).http
        return f"http://{http.host}:{http.port}"

    def healthz(self, site_id: str) -> dict:
        try:
            answer = self._http.get(f"{self.url(site_id)}/healthz")
        except httpx.HTTPError as exc:
            raise ActionFailed(f"site {site_id} does not answer at {self.url(site_id)}: {type(exc).__name__}") from None
        if answer.status_code != 200:
            raise ActionFailed(f"site {site_id} answers /healthz with {answer.status_code}")
        return {"url": self.url(site_id), "status": answer.status_code}

    def change_source(self, primary: str, standby: str) -> ChangeSource:
        return open_source(self.database_url(primary), primary, standby)

    def replication_lag_s(self, primary: str, standby: str) -> float | None:
        """Seconds between now and the primary's newest heartbeat the standby has applied (the replicator beats every
        0.2 s), or None when the standby has no stream from the primary."""
        engine = self.engine(standby, writer=False)
        if applied_position(engine, stream_name(primary, standby)) is None:
            return None
        with engine.connect() as conn:
            beat = conn.execute(select(replication_heartbeat.c.at)
                                .where(replication_heartbeat.c.source == primary)).scalar()
        return None if beat is None else max(0.0, self.clock() - beat)

    def backlog(self, primary: str, standby: str) -> tuple[int | None, float | None]:
        """Changes the standby has still to apply and its apply rate, where the positions count changes (SQLite's
        change log); PostgreSQL positions are WAL bytes, so (None, None) and the estimate uses the lag."""
        if not is_sqlite_url(self.database_url(primary)):
            return None, None
        source = self.change_source(primary, standby)
        try:
            pending = committed_position(source) - (applied_position(self.engine(standby, writer=False),
                                                                     stream_name(primary, standby)) or 0)
        finally:
            source.close()
        return max(0, pending), None

    def verify(self, primary: str, standby: str, settle_timeout_s: float):
        source = self.change_source(primary, standby)
        target = self.engine(standby, writer=False)

        def settle() -> None:
            wait_until_applied(source, target, stream_name(primary, standby), timeout_s=settle_timeout_s, poll_s=0.02)
        try:
            return verify(self.engine(primary, writer=False), target, settle=settle)
        finally:
            source.close()

    def start_replicator(self, primary: str, standby: str) -> int:
        """`standbyctl replicate --from primary --to standby` as its own process (its own session, so the runbook's
        exit or Ctrl-C does not stop it), logging to the data folder. Idempotent: a replicator of the stream that
        this started before and that still runs (its pid file) is kept, so a resumed run never starts a second."""
        if self.config_path is None:
            raise ActionFailed("no settings file to start a replicator with")
        stream = stream_name(primary, standby)
        folder = self.settings.path(self.settings.data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        pid_file = folder / f"replicate-{stream}.pid"
        running = running_replicator(pid_file) or find_replicator(self.config_path, primary, standby)
        if running:
            pid_file.write_text(str(running))
            return running
        port = self._free_metrics_port(standby, primary)
        with open(folder / f"replicate-{stream}.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "standbyctl.cli", "--config", str(self.config_path), "replicate",
                 "--from", primary, "--to", standby, "--metrics-port", str(port),
                 "--partitions", str(self.partitions_into(standby))],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        pid_file.write_text(str(proc.pid))
        return proc.pid

    def _free_metrics_port(self, old_primary: str, old_standby: str, wait_s: float = 30.0) -> int:
        """The replicator's metrics port once the stream it replaces (old primary → old standby) has finished: that
        replicator exits by itself once its source is fenced and everything is applied, and frees the port. If it
        is still running after `wait_s`, the new one serves no metrics rather than fail to start."""
        if not self.replicator_metrics_port:
            return 0
        old = self.settings.path(self.settings.data_dir) / f"replicate-{stream_name(old_primary, old_standby)}.pid"
        deadline = time.monotonic() + wait_s
        while running_replicator(old) and time.monotonic() < deadline:
            time.sleep(0.1)
        return 0 if running_replicator(old) else self.replicator_metrics_port

    def wait_replicating(self, primary: str, standby: str, timeout_s: float) -> int:
        """Wait until the stream's consumer has applied something after now (heartbeats count), so it is running."""
        since = self.clock()
        engine, stream = self.engine(standby, writer=False), stream_name(primary, standby)

        def newest_apply() -> float:
            with engine.connect() as conn:
                return conn.execute(select(func.max(replication_state.c.applied_at))
                                    .where(replication_state.c.stream == stream)).scalar() or 0.0
        for attempt in Retrying(retry=retry_if_exception_type(ActionFailed), wait=wait_fixed(0.1),
                                stop=stop_after_delay(timeout_s), reraise=True):
            with attempt:
                if newest_apply() <= since:
                    raise ActionFailed(f"stream {stream} has applied nothing for {self.clock() - since:.0f} s; see "
                                       f"var/replicate-{stream}.log")
        return applied_position(engine, stream) or 0

    def close(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._http.close()


def find_replicator(config_path: Path, primary: str, standby: str) -> int | None:
    """A live `standbyctl --config CONFIG replicate --from PRIMARY --to STANDBY`, found by its command line (Linux
    /proc): one that a run started and was killed before it wrote the pid file, which a resumed run must not start
    twice."""
    want = [b"--config", str(config_path).encode(), b"replicate", b"--from", primary.encode(), b"--to",
            standby.encode()]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(argv[i:i + len(want)] == want for i in range(len(argv) - len(want) + 1)):
            return int(proc.name)
    return None


def running_replicator(pid_file: Path) -> int | None:
    """The pid in `pid_file` if that process is alive and is a replicator (a pid may have been reused)."""
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and " replicate " in f" {command_line(pid)} " else None
