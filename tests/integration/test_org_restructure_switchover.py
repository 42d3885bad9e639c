"""The 2025 restructure through a switchover on the embedded default, under declarant traffic through the front: B
(the standby) prepares and switches to the new map while A keeps taking intake, then the switchover makes B the
primary, then A moves its own records. One story per backend (SQLite, PostgreSQL); the tests read what it left."""
from __future__ import annotations

import time
import uuid

import pytest
import ray

from standby.domain.states import SiteRole
from tests.integration.switchover_rig import Traffic, build_rig, declare_on_site, ledger_problems, on_step_intent
from tests.pg_fixtures import pg_cluster  # noqa: F401
from tests.integration.test_failback import run_book
from tests.integration.test_org_restructure import NEW, OPEN, snapshot, step_detail

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def story(request, tmp_path_factory, org, tariff, ray_session):
    site_urls = witness_url = None
    if request.param == "postgres":
        cluster = request.getfixturevalue("pg_cluster")
        urls = {part: cluster.create_database(f"org_{uuid.uuid4().hex[:8]}_{part}") for part in ("a", "b", "w")}
        site_urls, witness_url = {"A": urls["a"], "B": urls["b"]}, urls["w"]
    rig = build_rig(tmp_path_factory.mktemp("org-via-switchover"), org, enterprises_count=400, site_urls=site_urls,
                    witness_url=witness_url, ray_address=ray.get_runtime_context().gcs_address)
    monkeypatch = pytest.MonkeyPatch()
    traffic = Traffic(rig.front_url, rig.tokens, rig.tax_codes()[:40], tariff, clients=3).start()
    written: list = []
    try:
        time.sleep(1.0)
        # At the freeze's intent (B on the new map already, A not frozen yet): a live row that reaches B on the old
        # map, which B's applier must move.
        on_step_intent(monkeypatch, "freeze", lambda: written.append(
            declare_on_site(rig, "A", tariff, rig.tax_codes()[1], "after-b-switched-1")))
        # A generous freeze budget: the estimate follows the replication lag, which is timing on a shared machine.
        result = run_book(rig, "org-restructure-via-switchover", **{"from": "A", "to": "B", "freeze_budget_s": 5,
                                                                   "max_lag_s": 5})
        monkeypatch.undo()
        assert result.exit_code == 0, result.output
        time.sleep(1.0)
        ledger = traffic.stop()
        rig.wait_caught_up("B", "A")
        yield {"rig": rig, "ledger": ledger, "written": written[0], "output": result.output,
               "a": snapshot(rig, "A"), "b": snapshot(rig, "B"),
               "resume": step_detail(rig, "org-restructure-via-switchover", "resume"),
               "switch_standby": step_detail(rig, "org-restructure-via-switchover", "switch_standby")}
    finally:
        monkeypatch.undo()
        traffic.stop()
        rig.close()


def test_b_is_primary_on_the_new_map_and_a_follows_on_it(story) -> None:
    rig, a, b = story["rig"], story["a"], story["b"]
    assert rig.control("B").role is SiteRole.PRIMARY and rig.control("A").role is SiteRole.STANDBY
    assert a["map"].active_version.isoformat() == b["map"].active_version.isoformat() == NEW
    live = [d for d in b["declarations"].values() if d["state"] in OPEN]
    assert live and all(d["declarant_map_version"].isoformat() == NEW for d in live)
    assert rig.verify("B", "A").ok


def test_a_row_written_on_the_old_map_after_the_standby_switched_is_moved_on_arrival(story) -> None:
    written = story["written"]
    assert written.status_code == 201, written.text
    number = written.json()["number"]
    on_b = story["b"]["declarations"][number]
    assert on_b["declarant_map_version"].isoformat() == NEW
    assert on_b["declarant_prev_map_version"].isoformat() == "1900-01-01"
    assert story["switch_standby"]["moved"]["enterprise"] == 400


def test_clients_see_only_the_switchovers_freeze_and_nothing_is_lost(story) -> None:
    assert story["resume"]["freeze_s"] > 0
    stored = {n: v for n, v in story["rig"].stored("B").items() if n != story["written"].json()["number"]}
    assert ledger_problems(story["ledger"], stored) == []
    assert story["ledger"].errors == []
