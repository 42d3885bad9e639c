"""Freeze with hold on a real site: uvicorn + Ray workers on real SQLite, frozen, resumed, fenced and promoted with
the site-control operations a runbook calls, and an injected authority (a plain function) standing in for the
witness. Writes are held during a freeze and released in order; reads never are; nothing is lost or doubled."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from standby.domain.states import IntakeState, SiteRole
from standby.site_process import BackgroundServer, build_site
from standby.store.schema import declarations
from standby.store.site import fence, freeze, promote, read_control, resume
from tests.conftest import ServedSite, Tokens, make_site_db
from tests.integration.http_helpers import OFFICE, get, payload, post, refusal
from tests.integration.test_postgres_freeze_barrier import CountAtFreeze

B_URL = "http://127.0.0.1:8499"


class Authority:
    """The witness as the site sees it: (epoch, primary site), changed by the test."""

    def __init__(self, epoch: int, primary: str):
        self.value = (epoch, primary)

    def __call__(self) -> tuple[int, str | None]:
        return self.value


@dataclass
class Harness:
    served: ServedSite
    authority: Authority
    engine: object
    tariff: object

    @property
    def services(self):
        return self.served.site.services

    @property
    def epoch(self) -> int:
        return read_control(self.engine, "A").epoch

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.served.url, timeout=60)

    def until(self, condition, what: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting until {what}"
            time.sleep(0.005)

    def rows(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(declarations)).scalar_one()

    def numbers_stored(self, numbers) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(declarations).where(
                declarations.c.number.in_(list(numbers)))).scalar_one()

    def metric(self, name: str, **labels) -> float:
        text = httpx.get(f"{self.served.url}/metrics", timeout=10).text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == name and labels.items() <= s.labels.items())


@pytest.fixture(scope="module")
def harness(tmp_path_factory, org, tariff, ray_session):
    db = make_site_db(tmp_path_factory.mktemp("freeze"), org, enterprises_count=300)
    authority = Authority(1, "A")
    site = build_site(db.settings, "A", authority=authority)
    site.services.tokens = tokens = Tokens()
    site.services.primary_urls["B"] = B_URL
    http = db.settings.site("A").http
    server = BackgroundServer(site.app, http.host, http.port).start()
    served = ServedSite(db, site, server, tokens)
    engine = db.engine()
    yield Harness(served, authority, engine, tariff)
    engine.dispose()
    served.stop()


@pytest.fixture
def h(harness):
    """The site as an open primary before and after each test, whatever the test did to it."""
    yield harness
    control = read_control(harness.engine, "A")
    if control.role is SiteRole.STANDBY:
        control = promote(harness.engine, "A", epoch=max(control.epoch, control.fenced_epoch or 0) + 1)
    if control.intake_state is IntakeState.FROZEN:
        resume(harness.engine, "A", epoch=control.epoch)
    harness.authority.value = (control.epoch, "A")
    harness.services.control_ttl_s = 0.25
    harness.until(lambda: harness.services.held == 0, "no write is held")
    harness.until(lambda: httpx.get(f"{harness.served.url}/readyz", timeout=10).status_code == 200, "the site is ready")


@pytest.fixture(scope="module")
def tax_codes(harness) -> list[str]:
    return harness.served.db.active_enterprises(50)


def _write(h: Harness, tax_code: str, key: str | None = None, body: dict | None = None) -> httpx.Response:
    with h.client() as c:
        kw = {"key": key} if key else {}
        return post(c, "/v1/declarations", h.served.tokens.declarant(tax_code),
                    body or payload(h.tariff, tax_code), **kw)


def test_writes_in_flight_during_a_freeze_are_held_then_all_succeed_once_resumed_none_lost_or_doubled(h, tax_codes):
    before, stop = h.rows(), threading.Event()
    answers: list[httpx.Response] = []

    def writer(i: int) -> None:
        while not stop.is_set():
            answers.append(_write(h, tax_codes[i % len(tax_codes)]))

    held_before = h.metric("clearance_intake_holds_total")
    with ThreadPoolExecutor(6) as pool:
        for i in range(6):
            pool.submit(writer, i)
        h.until(lambda: len(answers) >= 20, "writes flow")
        epoch = h.epoch
        with CountAtFreeze(h.engine) as at_freeze:
            frozen = freeze(h.engine, "A", epoch=epoch, hold_s=30, hold_max=1000)
        assert frozen.intake_state is IntakeState.FROZEN and frozen.drained_s is not None
        h.until(lambda: h.services.held >= 3, "writes are held")
        # the freeze is a barrier (BEGIN IMMEDIATE on SQLite): what it counted before committing is all there is
        assert h.rows() == at_freeze.rows
        resume(h.engine, "A", epoch=frozen.epoch)
        h.until(lambda: len(answers) >= 60, "writes flow again")
        stop.set()
    assert [a.text for a in answers if a.status_code != 201] == []
    numbers = [a.json()["number"] for a in answers]
    assert len(set(numbers)) == len(numbers) == h.rows() - before
    assert h.numbers_stored(numbers) == len(numbers)
    assert h.metric("clearance_intake_holds_total") - held_before >= 3


def test_no_write_commits_while_frozen_and_held_writes_are_released_in_arrival_order(h, tax_codes):
    frozen = freeze(h.engine, "A", epoch=h.epoch, hold_s=60, hold_max=100)
    before, released_before = h.rows(), h.metric("clearance_intake_released_total")
    with ThreadPoolExecutor(8) as pool:
        futures = []
        for i in range(8):  # one office: one partition, so numbers follow the order the worker saw
            futures.append(pool.submit(_write, h, tax_codes[i]))
            h.until(lambda: h.services.held == i + 1, f"write {i} is held")
        assert h.rows() == before  # nothing of a held write is written
        resume(h.engine, "A", epoch=frozen.epoch)
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [201] * 8, [a.text for a in answers]
    numbers = [a.json()["number"] for a in answers]
    assert {a.json()["office_code"] for a in answers} == {OFFICE}
    assert numbers == sorted(numbers) and len(set(numbers)) == 8
    assert h.rows() == before + 8
    assert h.metric("clearance_intake_released_total") - released_before == 8


def test_a_write_held_past_the_freezes_time_bound_gets_503_held_too_long_with_retry_after(h, tax_codes):
    freeze(h.engine, "A", epoch=h.epoch, hold_s=0.3, hold_max=100)
    before, refused_before = h.rows(), h.metric("clearance_intake_hold_refused_total", reason="held_too_long")
    resp = _write(h, tax_codes[0])
    error = refusal(resp, 503, "held_too_long")
    assert resp.headers["Retry-After"] == "1" and "Idempotency-Key" in error["message"]
    assert h.rows() == before
    assert h.metric("clearance_intake_hold_refused_total", reason="held_too_long") - refused_before == 1


def test_a_write_over_the_freezes_count_bound_gets_503_hold_full_and_the_held_ones_succeed(h, tax_codes):
    frozen = freeze(h.engine, "A", epoch=h.epoch, hold_s=60, hold_max=2)
    before = h.rows()
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(_write, h, tax_codes[i]) for i in range(2)]
        h.until(lambda: h.services.held == 2, "two writes are held")
        full = _write(h, tax_codes[2])
        refusal(full, 503, "hold_full")
        assert full.headers["Retry-After"] == "1"
        resume(h.engine, "A", epoch=frozen.epoch)
        assert [f.result().status_code for f in held] == [201, 201]
    assert h.rows() == before + 2


def test_held_writes_get_503_naming_the_new_primary_and_its_url_when_the_site_is_fenced(h, tax_codes):
    epoch = h.epoch
    freeze(h.engine, "A", epoch=epoch, hold_s=60, hold_max=100)
    before = h.rows()
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_write, h, tax_codes[i]) for i in range(3)]
        h.until(lambda: h.services.held == 3, "three writes are held")
        fence(h.engine, "A", epoch=epoch + 1, primary_site="B")
        answers = [f.result() for f in futures]
    for resp in answers:
        error = refusal(resp, 503, "fenced")
        assert (error["primary_site"], error["primary_url"]) == ("B", B_URL)
        assert resp.headers["Retry-After"] == "1"
    assert h.rows() == before
    later = refusal(_write(h, tax_codes[4]), 503, "fenced")  # and a write arriving after is refused at once
    assert later["primary_site"] == "B"


def test_reads_are_never_held(h, tax_codes):
    made = _write(h, tax_codes[5])
    assert made.status_code == 201, made.text
    frozen = freeze(h.engine, "A", epoch=h.epoch, hold_s=60, hold_max=100)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(_write, h, tax_codes[6])
        h.until(lambda: h.services.held == 1, "a write is held")
        with h.client() as c:
            token = h.served.tokens.operator()
            shown = get(c, f"/v1/declarations/{made.json()['number']}", token)
            site = get(c, "/v1/site", token)
            ready = c.get("/readyz")
        assert h.services.held == 1  # the write is still held while the reads were answered
        assert shown.status_code == 200 and shown.json()["number"] == made.json()["number"]
        assert site.status_code == 200 and site.json()["intake_state"] == "frozen"
        assert ready.status_code == 503 and ready.json()["code"] == "intake_frozen"
        resume(h.engine, "A", epoch=frozen.epoch)
        assert held.result().status_code == 201


def test_a_site_under_a_stale_epoch_refuses_writes_naming_the_authoritys_primary(h, tax_codes):
    before = h.rows()
    h.authority.value = (h.epoch + 1, "B")
    with h.client() as c:
        h.until(lambda: c.get("/readyz").json().get("code") == "stale_epoch", "the site hears the new epoch")
    error = refusal(_write(h, tax_codes[7]), 503, "stale_epoch")
    assert (error["primary_site"], error["primary_url"]) == ("B", B_URL)
    assert h.rows() == before
    h.authority.value = (h.epoch, "A")
    with h.client() as c:
        h.until(lambda: c.get("/readyz").status_code == 200, "the site hears the current epoch again")
    assert _write(h, tax_codes[7]).status_code == 201


def test_a_write_that_meets_frozen_at_the_worker_is_held_and_carried_out_once(h, tax_codes):
    h.services.control_ttl_s = 3600.0  # the API keeps its cached "open" row: only the worker sees the freeze
    with h.client() as c:
        assert c.get("/readyz").status_code == 200
    frozen = freeze(h.engine, "A", epoch=h.epoch, hold_s=60, hold_max=100)
    before, held_before = h.rows(), h.metric("clearance_intake_holds_total")
    body = payload(h.tariff, tax_codes[8])
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(_write, h, tax_codes[8], "worker-saw-frozen-1", body)
        h.until(lambda: h.services.held == 1, "the write is held after the worker refused it")
        assert h.rows() == before
        resume(h.engine, "A", epoch=frozen.epoch)
        resp = answer.result()
    assert resp.status_code == 201, resp.text
    assert h.rows() == before + 1
    assert h.metric("clearance_intake_holds_total") - held_before == 1
    again = _write(h, tax_codes[8], "worker-saw-frozen-1", body)  # the same key: the stored answer, nothing new
    assert again.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["number"] == resp.json()["number"] and h.rows() == before + 1


def test_a_write_that_meets_fenced_at_the_worker_gets_503_naming_the_new_primary(h, tax_codes):
    h.services.control_ttl_s = 3600.0  # the API keeps its cached "open" row: only the worker sees the fencing
    with h.client() as c:
        assert c.get("/readyz").status_code == 200
    before = h.rows()
    fence(h.engine, "A", epoch=h.epoch + 1, primary_site="B")
    resp = _write(h, tax_codes[9])
    error = refusal(resp, 503, "fenced")
    assert (error["primary_site"], error["primary_url"], resp.headers["Retry-After"]) == ("B", B_URL, "1")
    assert h.rows() == before


def test_a_site_that_cannot_read_its_control_row_answers_writes_503_never_500(tmp_path, tariff):
    from standby.api.app import SiteServices, create_app
    from standby.api.metrics import SiteMetrics
    from standby.store.engine import make_engine
    from tests.conftest import free_port

    async def no_intake(_command):
        raise AssertionError("the gate must refuse before any intake")

    tokens = Tokens()
    services = SiteServices(site_id="A", read_engine=make_engine(f"sqlite:///{tmp_path / 'empty.db'}", writer=False),
                            submit=no_intake, tokens=tokens, metrics=SiteMetrics("A"))
    server = BackgroundServer(create_app(services), "127.0.0.1", free_port()).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            resp = post(c, "/v1/declarations", tokens.operator(), payload(tariff, "0100000010"))
            ready = c.get("/readyz")
    finally:
        server.stop()
        services.read_engine.dispose()
    refusal(resp, 503, "site_unavailable")
    refusal(ready, 503, "site_unavailable")
    assert resp.headers["Retry-After"] == "1"
