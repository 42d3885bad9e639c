"""standbyctl bench restructure --quick end to end (its own deployment in subprocesses: sites, front, replicator,
Locust, the runbooks), the bulk seed's open share, and the bench's verdict with plain values. No timing asserted:
the figures are the bench's output, never a test's condition."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import ray
import yaml
from sqlalchemy import func, select

from standby.domain.states import DeclarationState
from standby.store.engine import make_engine
from standby.store.migrate import upgrade
from standby.store.schema import declarations, goods_lines
from standby.store.seed import seed
from standbyctl.bench_restructure import IN_PLACE, ROLLBACK, lost_anything, size_verdict, table
from tests.conftest import REPO

OPEN = [s.value for s in DeclarationState if not s.is_terminal]


def test_the_seed_leaves_its_open_share_of_declarations_open_and_closes_the_rest(tmp_path, org, tariff,
                                                                                 rules) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        report = seed(engine, org, enterprises_count=1000, officers_per_section=1, declarations_count=6000,
                      tariff=tariff, rules=rules, open_share=0.2)
        with engine.connect() as conn:
            rows = conn.execute(select(declarations.c.state, declarations.c.closed_at, declarations.c.lane,
                                       declarations.c.line_count, declarations.c.base)).all()
            lines = dict(conn.execute(select(goods_lines.c.declaration_base, func.count())
                                      .group_by(goods_lines.c.declaration_base)).all())
    finally:
        engine.dispose()
    assert report.declarations == len(rows) == 6000
    still_open = [r for r in rows if r.state in OPEN]
    assert all(r.state == DeclarationState.PRE_DECLARED.value and r.closed_at is None and r.lane is None
               for r in still_open)
    assert all(r.state == DeclarationState.CLEARED.value and r.closed_at is not None and r.lane
               for r in rows if r.state not in OPEN)
    assert 0.15 < len(still_open) / len(rows) < 0.25
    assert all(lines[r.base] == r.line_count for r in rows)  # every declaration has its goods lines
    assert len({r.base for r in rows}) == len(rows)


def test_a_share_outside_zero_to_one_is_refused(tmp_path, org) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with pytest.raises(ValueError, match="open_share"):
            seed(engine, org, enterprises_count=0, open_share=1.5)
    finally:
        engine.dispose()


def _size(runs: list[dict], *, lost: list[str] = (), errors: int = 0, verify_ok: bool = True) -> dict:
    return {"runs": runs, "errors": errors, "verify_ok": verify_ok,
            "ledger": {"ok": not lost, "describe": f"{len(lost)} lost", "lost": list(lost)}}


def test_the_verdict_names_a_slow_freeze_a_failed_run_client_errors_and_anything_lost() -> None:
    fine = {"runbook": IN_PLACE, "status": "done", "freeze_s": 0.4, "error": None}
    assert size_verdict(_size([fine, {**fine, "runbook": ROLLBACK}])) == []
    missed = size_verdict(_size([{**fine, "freeze_s": 12.5}, {**fine, "runbook": ROLLBACK, "status": "failed",
                                                              "error": "switch refused"}],
                                lost=["1000000000010"], errors=3, verify_ok=False))
    assert missed == ["org-restructure froze 12.50 s > 10 s", "org-rollback failed: switch refused",
                      "3 client errors", "ledger: 1 lost", "verify found differences"]
    assert lost_anything({"sizes": [_size([fine], lost=["1000000000010"])]})
    assert not lost_anything({"sizes": [_size([fine], errors=2)]})


def test_the_table_has_a_row_per_run_and_a_dash_for_a_run_that_never_journaled() -> None:
    done = {"runbook": IN_PLACE, "status": "done", "freeze_s": 4.19, "prepare_s": 1.4, "drain_s": 0.0,
            "switch_s": 4.13, "moved": {"enterprise": 106000, "declaration": 12678}, "error": None}
    never = {"runbook": ROLLBACK, "status": "exit 2, no run journaled", "freeze_s": None, "error": "usage"}
    size = {**_size([done, never]), "declarations": 250_000, "open_share": 0.05, "seed_s": 52.5,
            "seed_rate": 4761.9, "retried": 0}
    lines = table({"sizes": [size]}).splitlines()
    assert len(lines) == 4
    assert "| 250,000 (5%) | 52.5 (4,762) | org-restructure | done | 1.40 | 4.19 (≤ 10) | 0.00 | 4.13 | 118678 |" \
        in lines[2]
    assert "| org-rollback | exit 2, no run journaled | — | — (≤ 10) | — | — | — |" in lines[3]


# A benchmark's whole run (a deployment of processes, Locust, three runbooks): 84 s of the suite's 14 minutes beside
# the other worker, so it runs on demand (`./run test -m bench`) like the benchmark itself; the runbooks it drives are
# tested end to end in test_org_restructure*.py, its seed, verdict and table above.
@pytest.mark.ray
@pytest.mark.bench
def test_bench_restructure_quick_runs_every_runbook_under_load_and_loses_nothing(tmp_path, ray_session) -> None:
    config = yaml.safe_load((REPO / "config" / "standby.yaml").read_text())
    config.update(root=str(REPO), data_dir=str(tmp_path / "var"))
    # The bench's sites and replicator join the test session's Ray instead of starting one each (seconds and CPU
    # that the rest of the suite, running beside it, needs).
    config["ray"] = {**config.get("ray", {}), "address": ray.get_runtime_context().gcs_address}
    (tmp_path / "standby.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "-m", "standbyctl.cli", "--config", str(tmp_path / "standby.yaml"),
                           "bench", "restructure", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    result = json.loads(out.read_text())
    [size] = result["sizes"]
    assert size["declarations"] == 5_000 and size["seed_s"] > 0 and size["seed_rate"] > 0
    names = [r["runbook"] for r in size["runs"]]
    assert names[:2] == [IN_PLACE, ROLLBACK]
    for run in size["runs"]:
        assert run["status"] == "done", run
        assert run["freeze_s"] is not None and run["switch_s"] is not None and sum(run["moved"].values()) > 0
    assert size["runs"][0]["prepare_s"] is not None and size["runs"][0]["prepared"]
    assert size["ledger"]["ok"] and size["ledger"]["acknowledged"] > 0, size["ledger"]
    assert size["verify_ok"]
    assert "| org-restructure | done |" in done.stdout
