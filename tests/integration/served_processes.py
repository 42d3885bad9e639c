"""A site served as an operator serves it with several HTTP processes: `standbyctl serve --site A --processes N` in a
session of its own, on a real SQLite site database (tests.conftest.make_site_db) with a local Ray, tokens in its
tokens file. It offers what the in-process ServedSite offers the tests that run against both (url, db, tokens),
and what only a real process tree has: the pids of its HTTP processes and of its ClearanceWorkers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from standby.api.auth import read_tokens_file, token_digest
from standby.processes import command_line
from standbyctl.token_reload import wait_until_accepted
from tests.conftest import REPO, SiteDb, Tokens, free_port

PROCESSES = 2


def children() -> dict[int, list[int]]:
    """Parent pid -> its children's pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children first."""
    tree, found, todo = children(), [], list(children().get(pid, ()))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo.extend(tree.get(child, ()))
    return found


class FileTokens(Tokens):
    """Tokens a test makes (as Tokens does), written to the site's tokens file by `publish`, which returns once the
    site's processes accept them (they re-read the file within about a second)."""

    def __init__(self, path: Path, url: str):
        super().__init__()
        self.path, self.url = path, url

    def publish(self, timeout_s: float = 30.0) -> None:
        with self._lock:
            made = list(self._made.items())
        entries = [{"sha256": token_digest(t), "role": r.value, "subject": s} for (r, s), t in made]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"tokens": entries}))
        tmp.replace(self.path)
        newest = made[-1][1]
        assert wait_until_accepted(self.url, newest, timeout_s), f"the site did not accept {newest} in {timeout_s} s"
        assert len(read_tokens_file(self.path)["tokens"]) == len(made)


@dataclass
class ServedProcesses:
    """`standbyctl serve --processes N` of site A (see the module)."""

    db: SiteDb
    proc: subprocess.Popen
    url: str
    tokens: FileTokens
    log: Path
    metrics_folder: Path

    def http_pids(self) -> list[int]:
        """The HTTP processes the supervisor runs now (multiprocessing's spawned children)."""
        return sorted(p for p in children().get(self.proc.pid, ()) if "spawn_main" in command_line(p))

    def worker_pids(self) -> list[int]:
        """The site's ClearanceWorker processes (in the local Ray the supervisor started)."""
        return sorted(p for p in descendants(self.proc.pid)
                      if command_line(p).split(" ")[0].split(".")[0] == "ray::ClearanceWorker")

    def metric(self, name: str, **labels) -> float:
        """The sum of `name`'s samples with these labels, from one scrape of the site."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == name and labels.items() <= s.labels.items())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of its session (Ray's processes too)
        except ProcessLookupError:
            pass


def serve_processes(db: SiteDb, tmp: Path, processes: int = PROCESSES, timeout_s: float = 120.0) -> ServedProcesses:
    """Serve `db`'s site with `processes` HTTP processes; returns once it answers /readyz."""
    port = free_port()
    config = tmp / "served-processes.yaml"
    config.write_text(yaml.safe_dump({
        "root": str(REPO), "data_dir": str(tmp),
        "sites": {db.site_id: {"site_digit": 1, "database_url": db.url,
                               "http": {"host": "127.0.0.1", "port": port, "processes": processes}}},
        "ray": {"workers": db.settings.ray.workers}, "auth": {"tokens_file": str(tmp / "tokens.yaml")},
        "intake": {"call_timeout_s": 20, "call_attempts": 4},
        "witness_url": f"sqlite:///{tmp / 'no-witness.db'}",  # none: the site keeps no lease
    }))
    log = tmp / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "standbyctl.cli", "--config", str(config), "serve",
                                 "--site", db.site_id], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    served = ServedProcesses(db, proc, url, FileTokens(tmp / "tokens.yaml", url), log,
                             tmp / "metrics" / f"site-{db.site_id}")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200 and len(served.http_pids()) == processes:
                return served
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            served.stop()
            raise RuntimeError(f"site {db.site_id} did not start: {log.read_text()[-3000:]}")
        time.sleep(0.2)
