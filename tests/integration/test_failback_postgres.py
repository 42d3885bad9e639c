"""The failback with reconcile on PostgreSQL: the same story as tests/integration/test_failback.py (A's lost tail,
the failover runbook, a conflicting write on B, the failback runbook) with sites A and B and the witness each in a
database of the suite's throwaway cluster. Here the old primary's tail is read from its logical slot, its rows are
swapped under session_replication_role = replica, the stream A -> B's slot on A is dropped, and B -> A streams from
the slot the failover created on B."""
from __future__ import annotations

import uuid

import pytest
import ray

from tests.integration import test_failback as story_of
from tests.integration.switchover_rig import build_rig
from tests.pg_fixtures import pg_cluster  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.ray]


@pytest.fixture(scope="module")
def story(tmp_path_factory, org, tariff, ray_session, pg_cluster):  # noqa: F811
    names = {part: f"fb_{uuid.uuid4().hex[:8]}_{part}" for part in ("a", "b", "witness")}
    urls = {part: pg_cluster.create_database(name) for part, name in names.items()}
    rig = None
    try:
        rig = build_rig(tmp_path_factory.mktemp("failback-pg"), org, enterprises_count=300,
                        site_urls={"A": urls["a"], "B": urls["b"]}, witness_url=urls["witness"],
                        ray_address=ray.get_runtime_context().gcs_address)
        yield story_of.tell(rig, tariff)
    finally:
        if rig is not None:
            rig.close()
        for name in names.values():
            if pg_cluster.is_running():
                pg_cluster.drop_database(name)


def test_postgres_failback_moves_the_tail_aside_and_the_old_primary_follows_the_new_one(story):
    assert story["rig"].settings.database_url("A").startswith("postgresql")
    story_of.check_quarantine_names_what_the_failover_lost(story)
    story_of.check_standby_of_the_new_primary(story)


def test_postgres_reconcile_brings_back_what_did_not_change_lists_the_conflict_and_answers_old_requests(story):
    story_of.check_reconciled(story)
    story_of.check_retry_answered_as_before(story)
    story_of.check_audited_and_block_raised(story)
    story_of.check_failback_again_changes_nothing(story)
