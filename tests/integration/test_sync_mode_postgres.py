"""Synchronous mode on PostgreSQL: sites A and B and the witness in databases of the suite's throwaway cluster, a
replicator process A → B decoding A's slot, traffic through the front. The committed position is a logical message
plus a peek of the slot the replicator consumes (replication.progress.committed_position retries while it is busy):
every 201 is on B when the client gets it, and every acknowledged number is on B after kill -9 of the replicator."""
from __future__ import annotations

import uuid

import pytest
import ray

from tests.integration.switchover_rig import Ledger, Traffic, build_rig, ledger_problems
from tests.integration.test_sync_mode import Writer, kill_replicator, on_site, sync_sample
from tests.pg_fixtures import pg_cluster  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.ray]


@pytest.fixture
def rig(tmp_path, org, ray_session, pg_cluster):  # noqa: F811
    urls = {part: pg_cluster.create_database(f"sync_{uuid.uuid4().hex[:8]}_{part}") for part in ("a", "b", "w")}
    rig = build_rig(tmp_path, org, enterprises_count=200, site_urls={"A": urls["a"], "B": urls["b"]},
                    witness_url=urls["w"], ray_address=ray.get_runtime_context().gcs_address,
                    sync={"pairs": [["A", "B"]], "on_standby_lost": "degrade", "standby_timeout_s": 5.0})
    yield rig
    rig.close()


def test_every_acknowledged_write_is_on_the_standby_when_the_client_gets_it_on_postgresql(rig, tariff):
    ledger = Ledger()
    writer = Writer(rig, tariff, ledger, "pg-sampled")
    traffic = Traffic(rig.front_url, rig.tokens, rig.tax_codes(), tariff, clients=4, pause_s=0.02).start()
    try:
        for _ in range(10):
            reply = writer.post()
            assert reply.status_code == 201, reply.text
            assert on_site(rig, "B", reply.json()["number"]), "acknowledged before the standby applied it"
    finally:
        background = traffic.stop()
    kill_replicator(rig)
    ledger.acknowledged.update(background.acknowledged)
    ledger.sent += background.sent
    ledger.errors += background.errors
    assert ledger.errors == []
    assert len(ledger.acknowledged) > 20
    assert ledger_problems(ledger, rig.stored("B")) == []
    assert sync_sample(rig, "standby_sync_lost_total", action="degrade") is None  # never degraded meanwhile
