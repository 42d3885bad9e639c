"""A site served by several HTTP processes (`standbyctl serve --processes 2`): every per-site guarantee holds whichever
process takes a request. Idempotency and number blocks are the site's (a key sent to two processes at once is
carried out once); a freeze holds writes in every process and one scrape shows them all; a process killed with -9
is replaced by its supervisor and nothing acknowledged is lost or doubled; the supervisor killed with -9 takes its
HTTP processes with it. The ClearanceWorker-death test runs against this site too (tests/fault/test_worker_death)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from sqlalchemy import func, select
from tenacity import AsyncRetrying, Retrying, retry_if_exception_type, retry_if_result, stop_after_delay, wait_fixed

from standby.processes import command_line, pid_alive
from standby.store.schema import declarations
from standby.store.site import freeze, read_control, resume
from standbyctl.token_reload import wait_until_accepted
from tests.conftest import make_site_db
from tests.integration.http_helpers import payload
from tests.integration.served_processes import PROCESSES, ServedProcesses, descendants, serve_processes


# Ray's own agents notice that their raylet died within a minute or two and leave by themselves (also with one process)
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


@pytest.fixture(scope="module")
def site(tmp_path_factory, org):
    tmp = tmp_path_factory.mktemp("processes")
    served = serve_processes(make_site_db(tmp, org, enterprises_count=600), tmp)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def tax_codes(site) -> list[str]:
    codes = site.db.active_enterprises(30)
    for code in codes:
        site.tokens.declarant(code)
    site.tokens.publish()
    return codes


def _per_process(folder: Path, kind: str, name: str) -> dict[int, float]:
    """pid -> the sum of `name`'s samples that process wrote (its own file in the site's metrics folder)."""
    values: dict[int, float] = {}
    for path in folder.glob(f"{kind}_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        values[pid] = sum(value for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(path))
                          if json.loads(key)[0] == name)
    return values


def _rows(site: ServedProcesses, numbers=None) -> int:
    engine = site.db.engine(writer=False)
    try:
        with engine.connect() as conn:
            query = select(func.count()).select_from(declarations)
            if numbers is not None:
                query = query.where(declarations.c.number.in_(list(numbers)))
            return conn.execute(query).scalar_one()
    finally:
        engine.dispose()


_BODIES: dict[str, dict] = {}  # one body per Idempotency-Key: a key sent again must carry the same request


async def _declare(site: ServedProcesses, tariff, tax_code: str, key: str, timeout_s: float = 60) -> httpx.Response:
    """Pre-declare on a connection of its own (so the kernel may hand it to any process), as a real client does: a
    503 or a broken connection is tried again with the same Idempotency-Key."""
    headers = {"Authorization": f"Bearer {site.tokens.declarant(tax_code)}", "Idempotency-Key": key}
    body = _BODIES.setdefault(key, payload(tariff, tax_code))
    async for attempt in AsyncRetrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(0.2), reraise=True,
                                       retry=retry_if_exception_type(httpx.TransportError)
                                       | retry_if_result(lambda reply: reply.status_code == 503)):
        with attempt:
            async with httpx.AsyncClient(timeout=timeout_s) as client:
                reply = await client.post(f"{site.url}/v1/declarations", json=body, headers=headers)
        if not attempt.retry_state.outcome.failed:
            attempt.retry_state.set_result(reply)
    return reply


def test_a_key_sent_to_both_processes_at_once_is_carried_out_once_and_one_scrape_counts_both(site, tax_codes, tariff):
    before = site.metric("clearance_requests_total", op="pre_declare")
    keys = [f"twice-{uuid.uuid4().hex}" for _ in range(40)]

    async def both():
        return await asyncio.gather(*(_declare(site, tariff, tax_codes[i % len(tax_codes)], key)
                                      for i, key in enumerate(keys) for _ in range(2)))

    replies = asyncio.run(both())
    assert {r.status_code for r in replies} == {201}, Counter((r.status_code, r.text[:80]) for r in replies)
    numbers = [r.json()["number"] for r in replies]
    assert numbers[0::2] == numbers[1::2], "both answers to one key name the same declaration"
    assert len(set(numbers)) == len(keys) and _rows(site, set(numbers)) == len(keys)
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in replies) == len(keys)
    served = {pid: n for pid, n in _per_process(site.metrics_folder, "counter", "clearance_requests").items()
              if pid in site.http_pids()}
    assert len(served) == PROCESSES and all(served.values()), f"requests taken by each HTTP process: {served}"
    assert site.metric("clearance_requests_total", op="pre_declare") - before == 2 * len(keys)


def test_a_freeze_holds_writes_in_every_process_and_resume_carries_each_out_once(site, tax_codes, tariff):
    engine = site.db.engine()
    rows_before = _rows(site)
    control = freeze(engine, "A", epoch=read_control(engine, "A").epoch, hold_s=60, hold_max=500)

    holding: dict[int, float] = {}

    async def frozen_then_resumed():
        tasks = []
        # writes on connections of their own until every process holds some (the kernel shares them out)
        for i in range(120):
            tasks.append(asyncio.create_task(_declare(site, tariff, tax_codes[i % len(tax_codes)], f"held-{i}")))
            await asyncio.sleep(0.02)
            held = _per_process(site.metrics_folder, "gauge_livesum", "clearance_intake_held")
            holding.update({pid: held[pid] for pid in site.http_pids() if held.get(pid)})
            if i >= 8 and len(holding) == PROCESSES:
                break
        async for attempt in AsyncRetrying(stop=stop_after_delay(30), wait=wait_fixed(0.05), reraise=True):
            with attempt:
                assert site.metric("clearance_intake_held") == len(tasks), "one scrape sees every process's holds"
        committed_while_frozen = _rows(site) - rows_before
        resume(engine, "A", epoch=control.epoch)
        return await asyncio.gather(*tasks), committed_while_frozen

    try:
        replies, committed_while_frozen = asyncio.run(frozen_then_resumed())
    finally:
        if read_control(engine, "A").intake_state.value == "frozen":
            resume(engine, "A", epoch=control.epoch)
        engine.dispose()
    assert len(holding) == PROCESSES, f"writes held by each HTTP process: {holding}"
    assert committed_while_frozen == 0
    assert {r.status_code for r in replies} == {201}, Counter((r.status_code, r.text[:80]) for r in replies)
    numbers = {r.json()["number"] for r in replies}
    assert len(numbers) == len(replies) and _rows(site) - rows_before == len(replies)
    assert site.metric("clearance_intake_held") == 0


def test_an_http_process_killed_with_9_under_load_is_replaced_and_nothing_is_lost_or_doubled(site, tax_codes,
                                                                                              tariff):
    rows_before, first_pids = _rows(site), site.http_pids()
    victim, answered = first_pids[0], []

    async def load_and_kill():
        gate = asyncio.Semaphore(12)

        async def one(i: int):
            async with gate:
                reply = await _declare(site, tariff, tax_codes[i % len(tax_codes)], f"kill-http-{i}")
                answered.append(reply)
                return reply

        async def killer():
            while len(answered) < 100:
                await asyncio.sleep(0.005)
            os.kill(victim, signal.SIGKILL)

        return (await asyncio.gather(killer(), *(one(i) for i in range(300))))[1:]

    replies = asyncio.run(load_and_kill())
    assert {r.status_code for r in replies} == {201}, Counter((r.status_code, r.text[:80]) for r in replies)
    numbers = {r.json()["number"] for r in replies}
    assert len(numbers) == 300 and _rows(site) - rows_before == 300 and _rows(site, numbers) == 300
    for attempt in Retrying(stop=stop_after_delay(60), wait=wait_fixed(0.2), reraise=True):
        with attempt:
            now = site.http_pids()
            assert len(now) == PROCESSES and victim not in now and set(first_pids) - {victim} <= set(now), now
    assert f"(pid {victim}) ended with signal 9; starting another" in site.log.read_text()


def test_a_token_written_to_the_file_is_known_to_every_process_once_wait_until_accepted_says_so(site):
    token = site.tokens.operator(f"late-{uuid.uuid4().hex[:6]}")
    assert not wait_until_accepted(site.url, token, timeout_s=1.0), "not written yet: refused"
    site.tokens.publish()  # writes the file, then wait_until_accepted
    answers = Counter(httpx.get(f"{site.url}/v1/site", headers={"Authorization": f"Bearer {token}"},
                                timeout=10).status_code for _ in range(30))  # each on a new connection
    assert answers == {200: 30}


def test_the_supervisor_killed_with_9_takes_its_http_processes_and_its_ray_with_it(tmp_path, org):
    served = serve_processes(make_site_db(tmp_path, org, enterprises_count=100), tmp_path)
    try:
        http, everything = served.http_pids(), descendants(served.proc.pid)
        assert len(http) == PROCESSES and served.worker_pids() and set(http) < set(everything)
        os.kill(served.proc.pid, signal.SIGKILL)
        for attempt in Retrying(stop=stop_after_delay(30), wait=wait_fixed(0.1), reraise=True):
            with attempt:
                assert not [pid for pid in http if pid_alive(pid)], "an HTTP process outlived its supervisor"
                left = [f"{pid} {command_line(pid)[:80]}" for pid in everything if pid_alive(pid)
                        and not command_line(pid).startswith(RAY_AGENTS)]
                assert not left, f"outlived the supervisor: {left}"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{served.url}/healthz", timeout=2)
    finally:
        served.stop()
