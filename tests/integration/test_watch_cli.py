"""`standbyctl watch --once` as an operator meets it, with A down (never served) and B its standby: manual mode
reports what it would do and changes nothing; --auto without a failover runbook refuses to start in one line; --auto
with the real runbooks/failover.yaml runs it through the runbook executor (its preconditions refuse here: B's API
is not up), audits the outcome and exits 1, and the flap guard then holds."""
from __future__ import annotations

import fcntl

import pytest
import yaml
from click.testing import CliRunner

from cutover.witness import open_witness
from standbyctl.cli import main
from tests.conftest import REPO, free_port


@pytest.fixture
def world(tmp_path):
    config = tmp_path / "standby.yaml"
    config.write_text(yaml.safe_dump({
        "root": str(REPO), "data_dir": str(tmp_path), "witness_url": f"sqlite:///{tmp_path / 'witness.db'}",
        "auth": {"tokens_file": str(tmp_path / "tokens.yaml")},
        "sites": {site: {"site_digit": digit, "database_url": f"sqlite:///{tmp_path / site.lower()}.db",
                         "http": {"host": "127.0.0.1", "port": free_port()}} for site, digit in (("A", 1), ("B", 2))},
        "watch": {"interval_s": 0.05, "health_timeout_s": 0.2, "failures_before_failover": 2}}))
    for args in (("--role", "primary"), ()):
        site = "A" if args else "B"
        result = CliRunner().invoke(main, ["--config", str(config), "db", "upgrade", "--site", site, *args,
                                           "--operator", "t"])
        assert result.exit_code == 0, result.output
    witness = open_witness(f"sqlite:///{tmp_path / 'witness.db'}")
    yield config, witness
    witness.close()


def watch(config, *args: str):
    return CliRunner().invoke(main, ["--config", str(config), "watch", "--site", "B", "--once", *args])


def decisions(witness) -> list:
    return [r for r in reversed(witness.audit_records(100)) if r.action.startswith("watch.")]


def test_manual_mode_reports_the_failover_it_would_run_and_changes_nothing(world):
    config, witness = world
    result = watch(config)
    assert result.exit_code == 0, result.output
    assert "OBSERVE_ONLY" in result.output and "--param from=A --param to=B" in result.output
    last = decisions(witness)[-1]
    assert (last.action, last.outcome, last.operator, last.detail["would"]) == (
        "watch.decide", "observe_only", "watch@B", "fail_over")
    assert (witness.state().epoch, witness.state().primary_site) == (1, "A") and witness.runs(5) == []


def test_automatic_mode_without_a_failover_runbook_refuses_to_start(world, tmp_path):
    config, witness = world
    result = watch(config, "--auto", "--dir", str(tmp_path / "none"))
    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line.startswith("error: ")] == [
        f"error: --auto runs the failover runbook, and there is none at {tmp_path / 'none' / 'failover.yaml'} "
        f"(--dir names its folder)"]
    assert decisions(witness) == []


def test_a_second_watch_of_the_same_site_refuses_to_start(world, tmp_path):
    config, witness = world
    with open(tmp_path / "watch-B.lock", "a+") as held:  # what a running watch of B holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        result = watch(config)
    assert result.exit_code == 2
    assert "error: a watch of site B is running already (pid 4242); one watch per site" in result.output
    assert decisions(witness) == []


def test_automatic_mode_runs_the_real_failover_runbook_and_a_refused_run_is_not_retried(world):
    config, witness = world
    result = watch(config, "--auto", "--operator", "night-watch")
    assert result.exit_code == 1, result.output
    runs = witness.runs(5)
    assert [(r.runbook, r.operator, r.params["from"], r.params["to"], r.status) for r in runs] == [
        ("failover", "night-watch", "A", "B", "refused")]
    outcomes = [(r.action, r.outcome) for r in decisions(witness)]
    assert outcomes[-2:] == [("watch.decide", "fail_over"), ("watch.failover", "refused")]
    again = watch(config, "--auto")
    assert again.exit_code == 0 and "BLOCKED_BY_FLAP_GUARD" in again.output
    assert len(witness.runs(5)) == 1
