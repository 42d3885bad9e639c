"""`standbyctl watch --site B --auto` as an operator runs it, with sites A (primary) and B (its standby, the stream
A -> B recorded) each served by its own `standbyctl serve` and a SQLite witness: the watch keeps still while A is
healthy and renews its lease; after kill -9 of A it fails over exactly once, after A's lease expired, auditing the
decision with its reason, by running the real runbooks/failover.yaml (done, its report exact: nothing was lost);
when a failover looks due again within the flap guard it does not fail over but audits BLOCKED_BY_FLAP_GUARD, and
so does a new watch process (the guard is read from the witness's audit). No replicator runs: nothing is written,
and the stream's recorded start is what the runbook's divergence point needs."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from cutover.actions.failover_journal import step_result
from cutover.witness import open_witness
from standby.store import site as site_control
from standby.store.engine import make_engine
from replication.streams import prepare_stream
from standbyctl.cli import main
from tests.conftest import REPO, free_port

LEASE = {"ttl_s": 1.5, "renew_interval_s": 0.25, "retry_timeout_s": 0.3, "fence_margin_s": 0.3}
WATCH = {"interval_s": 0.1, "health_timeout_s": 0.5, "failures_before_failover": 2, "flap_guard_s": 600}


@dataclass
class Deployment:
    tmp: Path
    config: Path
    url_a: str
    url_b: str
    metrics_url: str
    witness: object
    procs: list = field(default_factory=list)
    watch: subprocess.Popen | None = None

    def standbyctl(self, *args: str, log: str) -> subprocess.Popen:
        out = open(self.tmp / log, "ab")
        proc = subprocess.Popen([sys.executable, "-m", "standbyctl.cli", "--config", str(self.config), *args],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / name).read_text(errors="replace")

    def decisions(self) -> list:
        """The watch's decisions in the audit, oldest first."""
        return [r for r in reversed(self.witness.audit_records(1000)) if r.action == "watch.decide"]

    def outcomes(self) -> list[str]:
        return [r.outcome for r in self.decisions()]

    def checks(self, result: str) -> float:
        text = httpx.get(self.metrics_url, timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "watch_health_checks_total" and sample.labels.get("result") == result:
                    return sample.value
        return 0.0

    def wait_for(self, what: str, condition: Callable[[], object], timeout_s: float = 60) -> object:
        deadline = time.monotonic() + timeout_s
        while True:
            value = condition()
            if value:
                return value
            if self.watch is not None:
                assert self.watch.poll() is None, f"watch exited {self.watch.returncode}:\n{self.log('watch.log')}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}; audit {self.outcomes()}\n" \
                                                f"{self.log('watch.log') if (self.tmp / 'watch.log').exists() else ''}"
            time.sleep(0.05)


def cli(config: Path, *args: str) -> None:
    result = CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("watch")
    port_a, port_b, metrics_port = free_port(), free_port(), free_port()
    config = tmp / "standby.yaml"
    config.write_text(yaml.safe_dump({
        "root": str(REPO), "data_dir": str(tmp), "witness_url": f"sqlite:///{tmp / 'witness.db'}",
        "auth": {"tokens_file": str(tmp / "tokens.yaml")}, "ray": {"workers": 1},
        "sites": {"A": {"site_digit": 1, "database_url": f"sqlite:///{tmp / 'a.db'}",
                        "http": {"host": "127.0.0.1", "port": port_a}},
                  "B": {"site_digit": 2, "database_url": f"sqlite:///{tmp / 'b.db'}",
                        "http": {"host": "127.0.0.1", "port": port_b}}},
        "lease": LEASE, "watch": WATCH}))
    cli(config, "db", "upgrade", "--site", "A", "--role", "primary", "--operator", "t")
    cli(config, "db", "upgrade", "--site", "B", "--operator", "t")
    prepare_stream(f"sqlite:///{tmp / 'a.db'}", f"sqlite:///{tmp / 'b.db'}", "A-to-B", 2)  # B mirrors A from here
    witness = open_witness(f"sqlite:///{tmp / 'witness.db'}")
    dep = Deployment(tmp, config, f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}",
                     f"http://127.0.0.1:{metrics_port}/metrics", witness)
    try:
        yield dep
    finally:
        for proc in dep.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        witness.close()


@pytest.fixture(scope="module")
def failed_over(deployment):
    """A served (its lease keeper renewing A's lease), `watch --site B --auto` watching; the healthy window
    observed; then kill -9 of A and the failover waited for. Returns A's lease expiry at the kill and what the
    witness held at the end of the healthy window."""
    dep = deployment
    a = dep.standbyctl("serve", "--site", "A", "--in-process", log="a.log")  # its lease keeper renews in the witness
    b = dep.standbyctl("serve", "--site", "B", "--in-process", log="b.log")

    def answers(proc, url: str, path: str, log: str) -> bool:
        assert proc.poll() is None, dep.log(log)
        try:
            return httpx.get(f"{url}{path}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    dep.wait_for("A to serve", lambda: answers(a, dep.url_a, "/readyz", "a.log"), timeout_s=90)
    dep.wait_for("B to serve", lambda: answers(b, dep.url_b, "/healthz", "b.log"), timeout_s=90)
    dep.watch = dep.standbyctl("watch", "--site", "B", "--auto", "--metrics-port",
                               dep.metrics_url.split(":")[2].split("/")[0], log="watch.log")
    dep.wait_for("the watch to see A healthy", lambda: "nothing" in dep.outcomes())

    def metrics_up() -> float:
        try:
            return dep.checks("ok") or 0.0
        except httpx.HTTPError:
            return 0.0
    start = dep.wait_for("the watch's metrics", metrics_up)
    lease_before = dep.witness.state().lease_expires_at
    # The observation window: more health checks than a lease lasts (ttl 1.5 s at one check per 0.1 s).
    dep.wait_for("30 more checks", lambda: dep.checks("ok") + dep.checks("failed") >= start + 30)
    healthy = {"outcomes": dep.outcomes(), "state": dep.witness.state(), "runs": dep.witness.runs(10),
               "lease_before": lease_before}

    a.send_signal(signal.SIGKILL)
    a.wait(timeout=30)
    lease_at_kill = dep.witness.state().lease_expires_at
    dep.wait_for("the watch's failover run to end", lambda: [r for r in dep.witness.audit_records(1000)
                                                              if r.action == "watch.failover"])
    dep.wait_for("the watch to see B primary", lambda: dep.outcomes()[-1] == "nothing")
    return {"lease_at_kill": lease_at_kill, "healthy": healthy}


def test_while_the_primary_is_healthy_and_renews_its_lease_the_watch_never_fails_over(failed_over):
    healthy = failed_over["healthy"]
    assert healthy["outcomes"] and set(healthy["outcomes"]) <= {"nothing", "wait"}, healthy["outcomes"]
    assert (healthy["state"].epoch, healthy["state"].primary_site, healthy["state"].lease_holder) == (1, "A", "A")
    assert healthy["state"].lease_expires_at > healthy["lease_before"]  # renewed during the window
    assert healthy["runs"] == []


def test_after_kill_9_of_the_primary_the_watch_fails_over_exactly_once_after_its_lease_expired(deployment,
                                                                                               failed_over):
    dep = deployment
    state = dep.witness.state()
    assert (state.epoch, state.primary_site) == (2, "B")
    decided = [r for r in dep.decisions() if r.outcome == "fail_over"]
    assert len(decided) == 1, dep.outcomes()
    record = decided[0]
    assert (record.operator, record.target, record.args["primary"], record.args["epoch"]) == ("watch@B", "B", "A", 1)
    assert record.detail["rule"] == "failover_due"
    assert "A -> B" in record.detail["reason"] and "lease expired" in record.detail["reason"]
    assert record.at >= failed_over["lease_at_kill"]  # not a moment while A's lease ran
    runs = dep.witness.runs(10)
    assert [(r.runbook, r.operator, r.params["from"], r.params["to"], r.status) for r in runs] == [
        ("failover", "watch@B", "A", "B", "done")]
    outcome = [r for r in dep.witness.audit_records(1000) if r.action == "watch.failover"]
    assert [(r.outcome, r.args["run_id"]) for r in outcome] == [("done", runs[0].run_id)]
    report = step_result(dep.witness.entries(runs[0].run_id), "report")
    assert report["exact"] and report["lost_count"] == 0, report  # nothing was written, nothing lost
    assert "FAIL_OVER" in dep.log("watch.log")


def test_a_failover_due_again_within_the_flap_guard_is_blocked_and_audited_also_by_a_new_watch(deployment,
                                                                                               failed_over):
    dep = deployment
    # A is named primary again (as if switched back by hand) and is down; B follows it: a failover looks due.
    epoch = dep.witness.promote("A", dep.witness.state().epoch).epoch
    engine_b = make_engine(f"sqlite:///{dep.tmp / 'b.db'}")
    site_control.fence(engine_b, "B", epoch=epoch, primary_site="A")
    engine_b.dispose()
    dep.wait_for("the flap guard", lambda: dep.outcomes()[-1] == "blocked_by_flap_guard")
    failed = dep.checks("failed")
    dep.wait_for("20 more checks", lambda: dep.checks("failed") >= failed + 20)
    assert dep.outcomes().count("fail_over") == 1 and dep.outcomes().count("blocked_by_flap_guard") == 1
    blocked = dep.decisions()[-1]
    assert blocked.detail["rule"] == "flap_guard" and "600 s" in blocked.detail["reason"]
    assert (dep.witness.state().epoch, dep.witness.state().primary_site) == (epoch, "A")
    assert len(dep.witness.runs(10)) == 1

    dep.watch.send_signal(signal.SIGTERM)
    assert dep.watch.wait(timeout=30) == 0, dep.log("watch.log")
    assert "watch stopped" in dep.log("watch.log")
    dep.watch = None
    again = dep.standbyctl("watch", "--site", "B", "--auto", "--once", log="once.log")
    assert again.wait(timeout=60) == 0, dep.log("once.log")
    assert "BLOCKED_BY_FLAP_GUARD" in dep.log("once.log")
    assert dep.outcomes().count("fail_over") == 1 and dep.outcomes()[-1] == "blocked_by_flap_guard"
    assert len(dep.witness.runs(10)) == 1
