"""standbyctl as an operator meets it: real SQLite files, clean errors with exit codes, never a traceback."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from standbyctl.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "standby.yaml"
    path.write_text(yaml.safe_dump({
        "root": str(REPO), "data_dir": str(tmp_path),
        "sites": {"A": {"site_digit": 1, "database_url": f"sqlite:///{tmp_path / 'a.db'}", "http": {"port": 1}},
                  "B": {"site_digit": 2, "database_url": f"sqlite:///{tmp_path / 'b.db'}", "http": {"port": 2}}},
        "auth": {"tokens_file": str(tmp_path / "tokens.yaml")},
        "witness_url": f"sqlite:///{tmp_path / 'witness.db'}",
    }))
    return path


def run(config: Path, *args: str):
    return CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)


def test_upgrade_seed_status_round_trip(config):
    first = run(config, "db", "upgrade", "--site", "A", "--role", "primary")
    assert first.exit_code == 0 and "role primary, epoch 1, intake open" in first.output
    assert "role standby" in run(config, "db", "upgrade", "--site", "B").output
    assert run(config, "db", "current", "--site", "A").exit_code == 0
    seeded = run(config, "seed", "--site", "A", "--enterprises", "1500", "--officers-per-section", "2")
    assert seeded.exit_code == 0 and "enterprises +1500" in seeded.output and "officers +252" in seeded.output
    again = run(config, "seed", "--site", "A", "--enterprises", "1500")
    assert "enterprises +0" in again.output
    status = run(config, "status", "--json")
    rows = {r["site"]: r for r in json.loads(status.output)}
    assert rows["A"]["role"] == "primary" and rows["A"]["enterprises"] == 1500 and rows["A"]["api"] == "not running"
    assert rows["B"]["role"] == "standby" and rows["B"]["primary_site"] == "A"
    assert rows["A"]["org_map"] == {"active_version": "1900-01-01", "changeset": None}
    assert "org map in force: 1900-01-01 (as created)" in run(config, "status").output
    assert rows["A"]["witness_primary"] == "A" and rows["B"]["witness_epoch"] == 1
    assert rows["A"]["witness_warning"] is None and rows["B"]["witness_warning"] is None


def test_roles_are_not_changed_by_upgrade(config):
    run(config, "db", "upgrade", "--site", "A", "--role", "primary")
    again = run(config, "db", "upgrade", "--site", "A", "--role", "standby")
    assert again.exit_code == 0 and "roles change only through a runbook" in again.output


def test_tokens_are_shown_once_and_stored_as_hashes(config, tmp_path):
    issued = CliRunner().invoke(main, ["--config", str(config), "tokens", "issue", "--role", "operator",
                                       "--subject", "alice"])
    token = issued.stdout.strip().splitlines()[0]
    stored = (tmp_path / "tokens.yaml").read_text()
    assert len(token) >= 40 and token not in stored and "alice" in stored
    assert oct((tmp_path / "tokens.yaml").stat().st_mode)[-3:] == "600"
    listed = run(config, "tokens", "list")
    assert "operator" in listed.output and token not in listed.output


@pytest.mark.parametrize("args, code, words", [
    (["db", "upgrade", "--site", "Z"], 2, "unknown site 'Z'"),
    (["seed", "--site", "A"], 1, "run `standbyctl db upgrade --site A` first"),
    (["serve", "--site", "A"], 1, "standbyctl db upgrade --site A"),
    (["tokens", "issue", "--role", "declarant", "--subject", "abc"], 2, "10- or 13-digit tax code"),
    (["seed", "--site", "A", "--enterprises", "-5"], 2, "-5"),
])
def test_operator_mistakes_get_a_sentence_and_an_exit_code(config, args, code, words):
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert result.exit_code == code, result.output
    assert words in result.output and "Traceback" not in result.output


def test_serve_refuses_a_role_the_database_does_not_hold(config):
    run(config, "db", "upgrade", "--site", "A", "--role", "primary")  # the witness's primary comes first
    run(config, "db", "upgrade", "--site", "B")
    result = CliRunner().invoke(main, ["--config", str(config), "serve", "--site", "B", "--role", "primary"])
    assert result.exit_code == 1 and "standby in its database, not primary" in result.output


def test_a_broken_settings_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: {A: {site_digit: 0, database_url: x}}")
    result = CliRunner().invoke(main, ["--config", str(bad), "status"])
    assert result.exit_code == 2 and "bad.yaml" in result.output and "site_digit" in result.output


def test_help_teaches_the_first_run():
    result = CliRunner().invoke(main, ["--help"])
    assert "standbyctl db upgrade --site A" in result.output and "standbyctl demo" in result.output


def test_seed_adds_historical_declarations_that_are_closed_and_numbered_from_the_site(config, tmp_path):
    import sqlite3

    run(config, "db", "upgrade", "--site", "A", "--role", "primary")
    seeded = run(config, "seed", "--site", "A", "--enterprises", "1000", "--declarations", "1200")
    assert seeded.exit_code == 0 and "declarations +1200" in seeded.output
    db = sqlite3.connect(tmp_path / "a.db")
    states = dict(db.execute("SELECT state, count(*) FROM declarations GROUP BY state").fetchall())
    lanes = dict(db.execute("SELECT lane, count(*) FROM declarations GROUP BY lane").fetchall())
    numbers = [n for (n,) in db.execute("SELECT number FROM declarations")]
    lines = db.execute("SELECT count(*) FROM goods_lines").fetchone()[0]
    assert states == {"cleared": 1200} and set(lanes) == {"green", "yellow", "red"}
    assert len(set(numbers)) == 1200 and all(n.startswith("1") and len(n) == 12 for n in numbers)
    assert lines >= 1200
    # The live intake continues after the historical block: the next number is never one already used.
    next_sequence = db.execute("SELECT next_sequence FROM number_blocks WHERE site_digit = 1").fetchone()[0]
    assert next_sequence > max(int(n[1:11]) for n in numbers)


def test_bench_explains_its_capacity_figures(config):
    result = run(config, "bench", "intake", "--explain-capacity")
    assert result.exit_code == 0 and "peak declarations/s      = 3.41" in result.output


def test_replicate_then_verify_from_the_command_line(config, tmp_path):
    import sqlite3

    run(config, "db", "upgrade", "--site", "A", "--role", "primary")
    run(config, "db", "upgrade", "--site", "B")
    run(config, "seed", "--site", "A", "--enterprises", "1000", "--declarations", "300")
    refused = CliRunner().invoke(main, ["--config", str(config), "replicate", "--from", "B", "--to", "A", "--once",
                                        "--metrics-port", "0"])
    assert refused.exit_code == 1 and "replication only writes into a standby" in refused.output
    copied = run(config, "replicate", "--from", "A", "--to", "B", "--once", "--metrics-port", "0")
    assert copied.exit_code == 0 and "snapshot copied" in copied.output
    same = CliRunner().invoke(main, ["--config", str(config), "verify", "A", "B", "--settle-timeout", "0"])
    assert same.exit_code == 0 and "OK:" in same.output
    db = sqlite3.connect(tmp_path / "b.db")
    db.execute("UPDATE capture_txn SET capture = 0")  # change the standby behind replication's back
    db.execute("UPDATE enterprises SET street = 'changed' WHERE rowid = 5")
    db.commit()
    differs = CliRunner().invoke(main, ["--config", str(config), "verify", "A", "B", "--settle-timeout", "0"])
    assert differs.exit_code == 1 and "different in street" in differs.output and "DIFFERENT" in differs.output


def test_prune_deletes_only_old_idempotency_records_after_confirmation(config, tmp_path):
    import sqlite3
    import time

    run(config, "db", "upgrade", "--site", "A", "--role", "primary")
    db = sqlite3.connect(tmp_path / "a.db")
    old, new = time.time() - 10 * 86_400, time.time()
    db.executemany("INSERT INTO idempotency_keys VALUES (?, ?, 'h', 201, '{}', ?)",
                   [("declarant:1", f"old-{i}", old) for i in range(30)] + [("declarant:1", "new", new)])
    db.commit()
    declined = CliRunner().invoke(main, ["--config", str(config), "db", "prune", "--site", "A",
                                         "--keys-older-than-days", "7"], input="n\n")
    assert declined.exit_code == 1 and "delete 30 idempotency records" in declined.output
    assert db.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0] == 31
    done = run(config, "db", "prune", "--site", "A", "--keys-older-than-days", "7", "--yes")
    assert done.exit_code == 0 and "deleted 30" in done.output
    assert [k for (k,) in db.execute("SELECT key FROM idempotency_keys")] == ["new"]
    again = run(config, "db", "prune", "--site", "A", "--keys-older-than-days", "7", "--yes")
    assert "no idempotency records older than 7 days" in again.output


def test_issue_many_gives_a_load_generator_its_tokens(config, tmp_path):
    import json

    from standby.api.auth import TokenRegistry

    run(config, "db", "upgrade", "--site", "A", "--role", "primary")
    run(config, "seed", "--site", "A", "--enterprises", "1000", "--officers-per-section", "3")
    out = tmp_path / "lt" / "tokens.json"
    result = run(config, "tokens", "issue-many", "--site", "A", "--declarants", "50", "--officers-per-section", "2",
                 "--out", str(out))
    assert result.exit_code == 0 and "50 declarant and 252 officer tokens" in result.output
    body = json.loads(out.read_text())
    assert oct(out.stat().st_mode)[-3:] == "600" and len(body["offices"]) == 63
    registry = TokenRegistry.load(tmp_path / "tokens.yaml")
    assert registry.principal(body["declarants"][0]["token"]).subject == body["declarants"][0]["tax_code"]
    assert registry.principal(body["officers"][0]["token"]).subject == body["officers"][0]["officer_id"]
    assert body["declarants"][0]["token"] not in (tmp_path / "tokens.yaml").read_text()


def test_serve_refuses_several_processes_in_process_and_a_taken_port_before_starting_anything(config):
    run(config, "db", "upgrade", "--site", "A", "--role", "primary")
    both = run(config, "serve", "--site", "A", "--in-process", "--processes", "2")
    assert both.exit_code == 2 and "--in-process runs the site in one process; drop --processes 2" in both.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run(config, "serve", "--site", "A", "--processes", "2", "--port", str(port))
    assert busy.exit_code == 1 and f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in busy.output
    assert "Traceback" not in both.output + busy.output
