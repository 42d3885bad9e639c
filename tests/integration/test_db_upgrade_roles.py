"""`standbyctl db upgrade` takes roles from the witness, as an operator meets it: real SQLite files for two sites
and the witness, one-line refusals with exit code 2, never a traceback, every change audited."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cutover.witness import open_witness
from standbyctl.cli import main

REPO = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, witness_url: str | None = None) -> Path:
    path = tmp_path / "standby.yaml"
    path.write_text(yaml.safe_dump({
        "root": str(REPO), "data_dir": str(tmp_path),
        "sites": {"A": {"site_digit": 1, "database_url": f"sqlite:///{tmp_path / 'a.db'}", "http": {"port": 1}},
                  "B": {"site_digit": 2, "database_url": f"sqlite:///{tmp_path / 'b.db'}", "http": {"port": 2}}},
        "auth": {"tokens_file": str(tmp_path / "tokens.yaml")},
        "witness_url": witness_url or f"sqlite:///{tmp_path / 'witness.db'}",
    }))
    return path


@pytest.fixture
def config(tmp_path) -> Path:
    return write_config(tmp_path)


def run(config: Path, *args: str):
    return CliRunner().invoke(main, ["--config", str(config), *args])


def refused(result, code: int = 2) -> str:
    """The one line an operator reads; asserts the exit code and that nothing else was printed."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def witness_of(tmp_path: Path):
    return open_witness(f"sqlite:///{tmp_path / 'witness.db'}")


def test_the_first_primary_initialises_the_witness_and_is_audited(config, tmp_path):
    first = run(config, "db", "upgrade", "--site", "A", "--role", "primary", "--operator", "alice")
    assert first.exit_code == 0 and "role primary, epoch 1, intake open" in first.output
    w = witness_of(tmp_path)
    assert (w.state().epoch, w.state().primary_site) == (1, "A")
    [record] = w.audit_records()
    assert (record.operator, record.action, record.target, record.outcome) == ("alice", "db.upgrade", "A", "ok")
    assert record.args == {"role": "primary"} and record.detail["witness"] == "initialised"
    w.close()


def test_a_second_primary_is_refused_naming_the_first(config, tmp_path):
    run(config, "db", "upgrade", "--site", "A", "--role", "primary")
    line = refused(run(config, "db", "upgrade", "--site", "B", "--role", "primary", "--operator", "bob"))
    assert "site A primary at epoch 1" in line and "roles change through a runbook" in line
    assert not (tmp_path / "b.db").exists()  # refused before anything was created
    w = witness_of(tmp_path)
    assert w.state().primary_site == "A"
    last = w.audit_records(1)[0]
    assert (last.operator, last.target, last.outcome) == ("bob", "B", "refused") and "site A" in last.detail["reason"]
    w.close()


def test_a_standby_is_created_from_the_witness(config, tmp_path):
    run(config, "db", "upgrade", "--site", "A", "--role", "primary")
    standby = run(config, "db", "upgrade", "--site", "B")
    assert standby.exit_code == 0 and "role standby, epoch 1" in standby.output
    rows = {r["site"]: r for r in json.loads(run(config, "status", "--json").output)}
    assert rows["B"]["primary_site"] == "A" and rows["B"]["witness_warning"] is None


def test_without_a_primary_the_operator_is_told_to_name_one(config, tmp_path):
    line = refused(run(config, "db", "upgrade", "--site", "A"))
    assert "the witness names no primary yet" in line and "--role primary" in line
    assert not (tmp_path / "a.db").exists()


def test_after_a_promotion_the_primary_is_not_rebuilt_empty_and_the_old_one_comes_back_a_standby(config, tmp_path):
    run(config, "db", "upgrade", "--site", "A", "--role", "primary")
    run(config, "db", "upgrade", "--site", "B")
    w = witness_of(tmp_path)
    w.promote("B", 1)  # a switchover or failover moved the primary role to B (epoch 2)
    w.close()
    (tmp_path / "b.db").unlink()  # B's disk is gone
    line = refused(run(config, "db", "upgrade", "--site", "B"))
    assert "primary with no data" in line and "Restore site B's database" in line and "fail over" in line
    assert not (tmp_path / "b.db").exists()
    (tmp_path / "a.db").unlink()  # the old primary rebuilt from nothing: a standby, never a second primary
    rebuilt = run(config, "db", "upgrade", "--site", "A")
    assert rebuilt.exit_code == 0 and "role standby, epoch 2" in rebuilt.output
    again = refused(run(config, "db", "upgrade", "--site", "B", "--role", "primary"))
    assert "site B primary at epoch 2" in again and "primary with no data" in again


def test_status_warns_when_a_site_disagrees_with_the_witness(config, tmp_path):
    run(config, "db", "upgrade", "--site", "A", "--role", "primary")
    run(config, "db", "upgrade", "--site", "B")
    w = witness_of(tmp_path)
    w.promote("B", 1)  # the witness moved on; neither control row followed (a cutover that stopped half-way)
    w.close()
    shown = run(config, "status")
    assert shown.exit_code == 0 and "witness: epoch 2, primary B" in shown.output
    assert "(witness: primary B at epoch 2)" in shown.output
    assert "WARNING: site A's control row says primary at epoch 1, but the witness names B primary" in shown.output
    assert "WARNING: site B's control row says standby, but the witness names it primary" in shown.output


def test_witness_status_and_audit(config, tmp_path):
    assert "no witness at" in refused(run(config, "witness", "status"), 1)
    run(config, "db", "upgrade", "--site", "A", "--role", "primary", "--operator", "alice")
    run(config, "db", "upgrade", "--site", "B", "--role", "primary", "--operator", "bob")
    shown = run(config, "witness", "status")
    assert shown.exit_code == 0 and "epoch 1, primary A; lease: no lease held" in shown.output
    assert "no runbook runs" in shown.output
    audit = run(config, "witness", "audit")
    lines = audit.output.strip().splitlines()
    assert audit.exit_code == 0 and len(lines) == 2
    assert "bob  db.upgrade B  refused" in lines[0] and "alice  db.upgrade A  ok" in lines[1]
    as_json = json.loads(run(config, "witness", "audit", "--json", "--limit", "1").output)
    assert [r["operator"] for r in as_json] == ["bob"]


def test_an_unreachable_witness_is_one_line_and_exit_1(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    config = write_config(tmp_path, f"sqlite:///{blocker / 'witness.db'}")
    line = refused(run(config, "db", "upgrade", "--site", "A", "--role", "primary"), 1)
    assert "the witness" in line and "is unavailable" in line
    bad = write_config(tmp_path, "mysql://witness/db")
    assert "witness_url in the settings" in refused(run(bad, "db", "upgrade", "--site", "A", "--role", "primary"))


def test_two_first_primaries_at_once_leave_exactly_one(config, tmp_path):
    """Two operators run `--role primary` for A and B at the same moment: the witness's compare-and-set picks one."""
    cmd = [sys.executable, "-m", "standbyctl.cli", "--config", str(config), "db", "upgrade", "--role", "primary",
           "--site"]
    procs = [subprocess.Popen([*cmd, site], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for site in ("A", "B")]
    outcomes = [(p.wait(120), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in outcomes) == [0, 2], outcomes
    w = witness_of(tmp_path)
    winner = w.state().primary_site
    assert w.state().epoch == 1 and winner in ("A", "B")
    loser_err = next(err for code, _, err in outcomes if code == 2)
    assert f"site {winner} primary at epoch 1" in loser_err and "Traceback" not in loser_err
    w.close()


def test_a_deployment_older_than_the_witness_is_migrated_and_adopted(config, tmp_path):
    """Site A's database predates the witness (revision 0003, a primary control row), the witness is empty."""
    import sqlite3

    from standby.store.migrate import head_revision, upgrade

    upgrade(f"sqlite:///{tmp_path / 'a.db'}", "0003")
    db = sqlite3.connect(tmp_path / "a.db")
    db.execute("INSERT INTO site_control (site_id, role, epoch, intake_state, primary_site, updated_at) "
               "VALUES ('A', 'primary', 1, 'open', 'A', 0)")
    db.commit()
    db.close()
    hinted = run(config, "db", "upgrade", "--site", "A")
    assert hinted.exit_code == 0 and f"schema at {head_revision()}" in hinted.output
    assert "note: the witness is empty; record site A in it with" in hinted.output
    adopted = run(config, "db", "upgrade", "--site", "A", "--role", "primary", "--operator", "alice")
    assert adopted.exit_code == 0 and "role primary, epoch 1" in adopted.output
    w = witness_of(tmp_path)
    assert (w.state().epoch, w.state().primary_site) == (1, "A")
    assert w.audit_records(1)[0].detail["witness"] == "adopted"
    w.close()
    assert "role standby, epoch 1" in run(config, "db", "upgrade", "--site", "B").output
