"""kill -9 of ClearanceWorker processes under load: nothing accepted is lost, nothing is doubled.

Clients behave as real ones do: a request that fails with a 5xx is retried with the same Idempotency-Key."""
from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from loadtests.client import SiteClient
from standby.domain.states import Kind
from standby.store.schema import declarations, idempotency_keys
from standby.synthetic import make_declaration_payload
from tests.conftest import make_site_db, serve_site
from tests.integration.served_processes import PROCESSES, serve_processes

pytestmark = pytest.mark.fault

DECLARATIONS = 1600
KILL_AFTER = (300, 900)  # acknowledged declarations before each kill: the kills land mid-load


async def _declare_with_retries(client, token, payload, key, seen: Counter) -> dict:
    for _attempt in range(20):
        reply = await client.pre_declare(token, payload, key=key)
        replayed = (reply.headers or {}).get("Idempotent-Replayed") == "true"
        seen["replayed" if replayed else reply.status] += 1
        if reply.status == 201:
            return reply.body
        assert reply.status == 503, reply.body  # only "try again" refusals are acceptable here
        assert reply.error_code in ("intake_unavailable", "store_unavailable"), reply.body
        assert reply.body["error"]["message"]
        await asyncio.sleep(0.2)
    raise AssertionError(f"{key} never accepted")


async def _load_while_killing(served, tariff, worker_pids) -> tuple[list[dict], Counter, list[int]]:
    tax_codes = served.db.active_enterprises(50)
    rng = random.Random(3)
    offices = ["01CA", "79CA", "31CA", "48CA", "92CA", "22CA"]
    work = []
    for i in range(DECLARATIONS):
        tax_code = tax_codes[i % len(tax_codes)]
        payload = make_declaration_payload(rng, Kind.IMPORT if i % 3 else Kind.EXPORT, tax_code,
                                           offices[i % len(offices)], tariff)
        work.append((served.tokens.declarant(tax_code), payload, f"fault-{i}"))
    served.tokens.publish()
    client = SiteClient(served.url, max_connections=32)
    seen: Counter = Counter()
    gate = asyncio.Semaphore(32)
    killed: list[int] = []
    acknowledged = [0]

    async def one(token, payload, key):
        async with gate:
            body = await _declare_with_retries(client, token, payload, key, seen)
            acknowledged[0] += 1
            return body

    async def killer():
        pids = await asyncio.to_thread(worker_pids)
        for partition, after in enumerate(KILL_AFTER):
            while acknowledged[0] < after:
                await asyncio.sleep(0.005)
            os.kill(pids[partition], signal.SIGKILL)
            killed.append(pids[partition])

    try:
        results = await asyncio.gather(killer(), *(one(*w) for w in work))
    finally:
        await client.close()
    return results[1:], seen, killed


class InProcess:
    """The site in this process (uvicorn in a thread), one HTTP process."""

    processes = 1

    def __init__(self, tmp_path, org):
        self.served = serve_site(make_site_db(tmp_path, org, enterprises_count=1500))

    def worker_pids(self) -> list[int]:
        return self.served.site.pool.pids()

    def restarts(self) -> dict[str, float]:
        return {s.labels["partition"]: s.value for m in self.served.site.services.metrics.worker_restarts.collect()
                for s in m.samples if s.name.endswith("_total")}


class InProcesses:
    """`standbyctl serve --processes 2`: two HTTP processes sharing the site's workers."""

    processes = PROCESSES

    def __init__(self, tmp_path, org):
        self.served = serve_processes(make_site_db(tmp_path, org, enterprises_count=1500), tmp_path)

    def worker_pids(self) -> list[int]:
        return self.served.worker_pids()  # both of them: which is which partition does not matter here

    def restarts(self) -> dict[str, float]:
        text = httpx.get(f"{self.served.url}/metrics", timeout=10).text
        return {s.labels["partition"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "clearance_worker_restarts_total"}


@pytest.mark.parametrize("kind", [InProcess, InProcesses], ids=["one process", "two HTTP processes"])
def test_kill_9_of_workers_under_load_loses_and_doubles_nothing(tmp_path, org, tariff, ray_session, kind):
    site = kind(tmp_path, org)
    served = site.served
    try:
        before = site.worker_pids()
        accepted, seen, killed = asyncio.run(_load_while_killing(served, tariff, site.worker_pids))
        after = site.worker_pids()
        restarts = site.restarts()
    finally:
        served.stop()
    assert len(killed) == 2 and set(killed) == set(before)
    assert not set(after) & set(killed), "Ray restarted the killed workers as new processes"
    numbers = [a["number"] for a in accepted]
    assert len(numbers) == DECLARATIONS == len(set(numbers)), "every declaration answered once, each number once"
    engine = served.db.engine(writer=False)
    with engine.connect() as conn:
        stored = set(conn.execute(select(declarations.c.number)).scalars())
        keys = conn.execute(select(func.count()).select_from(idempotency_keys)
                            .where(idempotency_keys.c.key.like("fault-%"))).scalar()
    engine.dispose()
    assert stored == set(numbers), "the database holds exactly the acknowledged declarations"
    assert keys == DECLARATIONS
    # The kills were felt: each killed partition's batches went to a new incarnation of its worker, which the site
    # noticed (one restart per kill, seen by each HTTP process that called that worker afterwards). Clients need not
    # notice: the pool sends a dead worker's batch again to its restarted incarnation, so a client may see only a
    # slower 201 (or a replay, or a 503 if restarting took longer than the pool's attempts); what they saw is in the
    # message.
    assert set(restarts) == {"0", "1"} and all(1 <= n <= site.processes for n in restarts.values()), \
        f"restarts by partition {restarts}; clients saw {dict(seen)}"
