"""The front against real sites (uvicorn + Ray workers on SQLite) and a real SQLite witness: requests reach the
primary the witness names, the front follows a new primary, writes are held while no primary can take them and flow
once one can, bounds give clear 503s, reads are never held, and a site stopped mid-stream loses and doubles nothing.

Site B starts as a copy of site A's database (same enterprises, so the same payloads are valid at both), standby of
A, with its own site digit. Roles move as a switchover moves them: fence the old primary, promote the new one at a
newer epoch (intake frozen), name it in the witness, resume."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from cutover.front.app import build_front
from cutover.witness import open_witness
from standby.domain.states import IntakeState, SiteRole
from standby.settings import FrontSettings, HttpSettings, Settings, load_settings
from standby.site_process import BackgroundServer
from standby.store.schema import declarations, idempotency_keys
from standby.store.site import fence, promote, read_control, resume
from tests.conftest import REPO, ServedSite, SiteDb, free_port, make_site_db, serve_site
from tests.integration.http_helpers import payload, refusal

pytestmark = pytest.mark.ray


@dataclass
class Pair:
    a: ServedSite
    b: ServedSite
    tax_codes: list[str]

    def served(self, site_id: str) -> ServedSite:
        return self.a if site_id == "A" else self.b

    def token(self, i: int = 0) -> str:
        return self.a.tokens.declarant(self.tax_codes[i % len(self.tax_codes)])


def copy_as_standby(primary: SiteDb, tmp: Path) -> SiteDb:
    """Site B: a copy of A's database (same reference data and enterprises), standby of A, site digit 2."""
    target = tmp / "site-b.db"
    with sqlite3.connect(primary.url[len("sqlite:///"):]) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
        dst.execute("UPDATE site_control SET site_id = 'B', role = 'standby', primary_site = 'A'")
    config = tmp / "settings-B.yaml"
    config.write_text(yaml.safe_dump({
        "root": str(REPO), "data_dir": str(tmp),
        "sites": {"B": {"site_digit": 2, "database_url": f"sqlite:///{target}",
                        "http": {"host": "127.0.0.1", "port": free_port()}}},
        "ray": {"workers": 1}, "auth": {"tokens_file": str(tmp / "tokens.yaml")},
        "intake": {"call_timeout_s": 20, "call_attempts": 4},
    }))
    return SiteDb(load_settings(config), "B", f"sqlite:///{target}")


@pytest.fixture(scope="module")
def pair(tmp_path_factory, org, ray_session):
    db_a = make_site_db(tmp_path_factory.mktemp("front-a"), org, enterprises_count=400, workers=1)
    db_b = copy_as_standby(db_a, tmp_path_factory.mktemp("front-b"))
    a, b = serve_site(db_a), None
    try:
        b = serve_site(db_b)
        b.site.services.tokens = a.tokens  # one token registry: a client's token works wherever the front sends it
        b.tokens = a.tokens
        yield Pair(a, b, db_a.active_enterprises(40))
    finally:
        for served in (a, b):
            if served is not None:
                served.stop()


@dataclass
class RunningFront:
    url: str
    app: object
    server: BackgroundServer
    witness: object  # the operator's own handle on the witness (the front has its own)

    @property
    def front(self):
        return self.app.state.front

    def stop(self) -> None:
        self.server.stop()
        self.witness.close()


@pytest.fixture
def start_front(pair, tmp_path):
    """start_front(initialise=..., **front settings) -> RunningFront on a fresh SQLite witness file."""
    started: list[RunningFront] = []

    def start(initialise: str | None = "A", sites: dict | None = None, **front) -> RunningFront:
        url = f"sqlite:///{tmp_path / f'witness-{len(started)}.db'}"
        operator = open_witness(url)
        if initialise:
            operator.initialise(initialise)
        sites = sites or {"A": pair.a.db.settings.site("A"), "B": pair.b.db.settings.site("B")}
        settings = Settings(root=REPO, sites=sites, witness_url=url, front=FrontSettings(port=free_port(), **front))
        lookup_witness = open_witness(url)  # the front's own connection, as in its own process
        app = build_front(settings, lookup_witness.state)
        server = BackgroundServer(app, "127.0.0.1", settings.front.port).start()
        running = RunningFront(server.url, app, server, operator)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def site_primary(pair: Pair, site_id: str) -> None:
    """Make `site_id` the open primary in the sites' control rows (the other fenced), as a switchover does."""
    other = "B" if site_id == "A" else "A"
    target, old = pair.served(site_id).db.engine(), pair.served(other).db.engine()
    try:
        rows = [read_control(target, site_id), read_control(old, other)]
        if rows[0].role is SiteRole.PRIMARY and rows[0].intake_state is IntakeState.OPEN:
            return
        epoch = max(max(r.epoch, r.fenced_epoch or 0) for r in rows) + 1
        fence(old, other, epoch=epoch, primary_site=site_id)
        promote(target, site_id, epoch=epoch)
        resume(target, site_id, epoch=epoch)
    finally:
        target.dispose()
        old.dispose()


def name_primary(witness, site_id: str) -> None:
    state = witness.state()
    if state.primary_site is None:
        witness.initialise(site_id)
    elif state.primary_site != site_id:
        witness.promote(site_id, state.epoch)


def post_declaration(client: httpx.Client, pair: Pair, i: int, key: str | None = None) -> httpx.Response:
    tax_code = pair.tax_codes[i % len(pair.tax_codes)]
    return client.post("/v1/declarations", json=payload_for(pair, i),
                       headers={"Authorization": f"Bearer {pair.a.tokens.declarant(tax_code)}",
                                "Idempotency-Key": key or f"front-{uuid.uuid4().hex}"})


_payloads: dict[int, dict] = {}


def payload_for(pair: Pair, i: int) -> dict:
    from standby.domain.tariff import load_tariff

    if i not in _payloads:
        _payloads[i] = payload(load_tariff(REPO / "config" / "tariffs.yaml"), pair.tax_codes[i % len(pair.tax_codes)])
    return _payloads[i]


def keys_at(pair: Pair, site_id: str, keys: list[str]) -> dict[str, int]:
    engine = pair.served(site_id).db.engine(writer=False)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(idempotency_keys.c.key, func.count()).where(idempotency_keys.c.key.in_(keys))
                                .group_by(idempotency_keys.c.key)).all()
        return {k: n for k, n in rows}
    finally:
        engine.dispose()


def declaration_count(pair: Pair, site_id: str, number: str) -> int:
    engine = pair.served(site_id).db.engine(writer=False)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(declarations)
                                .where(declarations.c.base == number[:11])).scalar_one()
    finally:
        engine.dispose()


def metric(front_url: str, name: str, **labels) -> float:
    text_ = httpx.get(f"{front_url}/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text_) for s in f.samples
               if s.name == name and labels.items() <= s.labels.items())


def eventually(condition, what: str, timeout_s: float = 60.0) -> None:
    """Wait for a condition the test needs before its next step (a bound against hanging, not an assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


def in_background(fn, *args):
    """Run fn(*args) in a thread; returns (thread, box) where box["result"] is its return value once done."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001  (reported by the test's assertion)
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


# --- forwarding ------------------------------------------------------------------------------------------------------


def test_requests_through_the_front_reach_the_primary_with_their_headers_query_and_body(pair, start_front):
    site_primary(pair, "A")
    running = start_front()
    with httpx.Client(base_url=running.url, timeout=60) as client:
        key = f"front-{uuid.uuid4().hex}"
        made = post_declaration(client, pair, 0, key)
        assert made.status_code == 201, made.text
        assert made.headers["x-standby-site"] == "A" and made.json()["number"].startswith("1")
        assert keys_at(pair, "A", [key]) == {key: 1} and keys_at(pair, "B", [key]) == {}
        assert declaration_count(pair, "A", made.json()["number"]) == 1

        replay = post_declaration(client, pair, 0, key)  # same key, same body: the site's stored answer
        assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
        assert replay.json() == made.json()

        token = pair.token(0)
        shown = client.get(f"/v1/declarations/{made.json()['number']}", headers={"Authorization": f"Bearer {token}"})
        assert shown.status_code == 200 and shown.json()["number"] == made.json()["number"]

        unauthorised = client.post("/v1/declarations", json=payload_for(pair, 0), headers={"Idempotency-Key": "k-1"})
        refusal(unauthorised, 401, "unauthorized")
        assert unauthorised.headers["www-authenticate"] == "Bearer"

        officer = {"Authorization": f"Bearer {pair.a.tokens.officer('no-such-officer')}"}
        refusal(client.get("/v1/officers/me/queue?limit=many", headers=officer), 422, "invalid_request", "limit")
        assert client.get("/v1/officers/me/queue?limit=1", headers=officer).json()["items"] == []

        assert client.get("/healthz").json() == {"status": "ok", "front": True}
        assert client.get("/readyz").json()["primary_site"] == "A"
        assert metric(running.url, "front_forwarded_total", status_class="2xx") >= 4
        assert metric(running.url, "front_forward_latency_seconds_count") >= 6
        assert metric(running.url, "front_primary_epoch") == 1


def test_the_front_follows_when_the_witness_names_another_primary(pair, start_front):
    site_primary(pair, "A")
    running = start_front()
    with httpx.Client(base_url=running.url, timeout=60) as client:
        at_a = post_declaration(client, pair, 1)
        assert at_a.status_code == 201 and at_a.headers["x-standby-site"] == "A", at_a.text

        site_primary(pair, "B")
        name_primary(running.witness, "B")
        eventually(lambda: client.get("/readyz").json()["primary_site"] == "B", "the front sees B named")
        at_b = post_declaration(client, pair, 2)
        assert at_b.status_code == 201, at_b.text
        assert at_b.headers["x-standby-site"] == "B" and at_b.json()["number"].startswith("2")
        assert declaration_count(pair, "B", at_b.json()["number"]) == 1
        assert metric(running.url, "front_primary_epoch") == 2
        assert metric(running.url, "front_primary_site", site="B") == 1
    site_primary(pair, "A")


# --- holding ---------------------------------------------------------------------------------------------------------


def test_writes_are_held_while_no_primary_is_named_and_flow_once_one_is(pair, start_front):
    site_primary(pair, "A")
    running = start_front(initialise=None, hold_max_s=120)
    keys = [f"front-held-{i}-{uuid.uuid4().hex}" for i in range(5)]
    with httpx.Client(base_url=running.url, timeout=120) as client, ThreadPoolExecutor(5) as pool:
        assert client.get("/readyz").status_code == 503
        futures = [pool.submit(post_declaration, client, pair, i, key) for i, key in enumerate(keys)]
        eventually(lambda: running.front.holding == 5, "five writes held")
        assert not any(f.done() for f in futures)
        assert keys_at(pair, "A", keys) == {}

        running.witness.initialise("A")
        answers = [f.result() for f in futures]
    assert [r.status_code for r in answers] == [201] * 5, [r.text for r in answers]
    assert keys_at(pair, "A", keys) == {k: 1 for k in keys}
    assert metric(running.url, "front_held_total") == 5 and metric(running.url, "front_released_total") == 5
    assert metric(running.url, "front_held_requests") == 0


def test_held_writes_are_released_in_the_order_they_arrived(pair, start_front):
    site_primary(pair, "A")
    running = start_front(initialise=None, hold_max_s=120)
    keys = [f"front-order-{i}-{uuid.uuid4().hex}" for i in range(6)]
    sent: list[str] = []
    forward = running.front._forward

    async def recording_forward(primary, out):
        sent.append({k.lower(): v for k, v in out.headers}["idempotency-key"])
        return await forward(primary, out)

    running.front._forward = recording_forward
    with httpx.Client(base_url=running.url, timeout=120) as client, ThreadPoolExecutor(len(keys)) as pool:
        futures = []
        for i, key in enumerate(keys):  # each arrives once the one before is held: the arrival order is known
            futures.append(pool.submit(post_declaration, client, pair, i, key))
            eventually(lambda: running.front.holding == i + 1, f"write {i} held")
        running.witness.initialise("A")
        assert [f.result().status_code for f in futures] == [201] * len(keys)
    assert sent == keys


def test_during_a_switchover_writes_are_held_and_reach_the_new_primary_without_client_errors(pair, start_front):
    """The witness names B before B is open (B answers not_primary, then intake_frozen): writes wait at the front,
    then land on B once it opens; none reaches the fenced A."""
    site_primary(pair, "A")
    running = start_front(hold_max_s=120)
    keys = [f"front-switch-{i}-{uuid.uuid4().hex}" for i in range(4)]
    engine_a, engine_b = pair.a.db.engine(), pair.b.db.engine()
    try:
        with httpx.Client(base_url=running.url, timeout=120) as client, ThreadPoolExecutor(4) as pool:
            a_row, b_row = read_control(engine_a, "A"), read_control(engine_b, "B")
            epoch = max(a_row.epoch, b_row.epoch, a_row.fenced_epoch or 0, b_row.fenced_epoch or 0) + 1
            fence(engine_a, "A", epoch=epoch, primary_site="B")
            name_primary(running.witness, "B")  # B is still a standby: it answers not_primary
            eventually(lambda: client.get("/readyz").json()["primary_site"] == "B", "the front sees B named")
            futures = [pool.submit(post_declaration, client, pair, i, key) for i, key in enumerate(keys)]
            eventually(lambda: running.front.holding == 4, "four writes held while B is a standby")

            promote(engine_b, "B", epoch=epoch)  # primary, intake frozen: B answers intake_frozen
            eventually(lambda: running.front.holding == 4 and metric(running.url, "front_held_total") == 4
                       and read_control(engine_b, "B").intake_state is IntakeState.FROZEN, "B promoted, frozen")
            assert not any(f.done() for f in futures)
            resume(engine_b, "B", epoch=epoch)
            answers = [f.result() for f in futures]
    finally:
        engine_a.dispose()
        engine_b.dispose()
    assert [r.status_code for r in answers] == [201] * 4, [r.text for r in answers]
    assert all(r.headers["x-standby-site"] == "B" for r in answers)
    assert keys_at(pair, "B", keys) == {k: 1 for k in keys} and keys_at(pair, "A", keys) == {}
    assert metric(running.url, "front_released_total") == 4
    site_primary(pair, "A")


def test_a_write_held_past_its_bound_gets_503_front_held_too_long_and_is_not_carried_out(pair, start_front):
    site_primary(pair, "A")
    running = start_front(initialise=None, hold_max_s=0.3)
    key = f"front-late-{uuid.uuid4().hex}"
    with httpx.Client(base_url=running.url, timeout=60) as client:
        late = post_declaration(client, pair, 3, key)
    refusal(late, 503, "front_held_too_long")
    assert int(late.headers["retry-after"]) >= 1
    assert keys_at(pair, "A", [key]) == {} and keys_at(pair, "B", [key]) == {}
    assert metric(running.url, "front_refused_total", reason="front_held_too_long") == 1
    assert metric(running.url, "front_held_requests") == 0


def test_writes_over_the_hold_count_bound_get_503_front_hold_full_and_the_held_ones_flow(pair, start_front):
    site_primary(pair, "A")
    running = start_front(initialise=None, hold_max_s=120, hold_max_requests=2)
    keys = [f"front-full-{i}-{uuid.uuid4().hex}" for i in range(3)]
    with httpx.Client(base_url=running.url, timeout=120) as client, ThreadPoolExecutor(2) as pool:
        held = [pool.submit(post_declaration, client, pair, i, keys[i]) for i in range(2)]
        eventually(lambda: running.front.holding == 2, "two writes held")
        full = post_declaration(client, pair, 2, keys[2])
        refusal(full, 503, "front_hold_full")
        assert full.headers["retry-after"]
        running.witness.initialise("A")
        assert [f.result().status_code for f in held] == [201, 201]
    assert keys_at(pair, "A", keys) == {keys[0]: 1, keys[1]: 1}
    assert metric(running.url, "front_refused_total", reason="front_hold_full") == 1


def test_reads_are_never_held(pair, start_front):
    """With no primary named a read is answered at once by a site that answers reads (marked X-Read-From: standby),
    not held; while a write is held, reads still go."""
    site_primary(pair, "A")
    running = start_front(initialise=None, hold_max_s=120)
    token = {"Authorization": f"Bearer {pair.token(4)}"}
    with httpx.Client(base_url=running.url, timeout=120) as client:
        read = client.get("/v1/site", headers=token)
        assert read.status_code == 200 and read.headers["x-read-from"] == "standby", read.text
        assert metric(running.url, "front_held_total") == 0

        thread, box = in_background(post_declaration, client, pair, 4)
        eventually(lambda: running.front.holding == 1, "a write held")
        running.witness.initialise("B")  # B is a standby: it takes no writes, but it answers reads
        eventually(lambda: client.get("/readyz").json()["primary_site"] == "B", "the front sees B named")
        served = client.get("/v1/site", headers=token)
        assert served.status_code == 200 and served.json()["site"] == "B"
        assert served.headers["x-standby-site"] == "B"
        assert running.front.holding == 1 and thread.is_alive()  # the write is still held behind B's not_primary
        assert metric(running.url, "front_held_total") == 1

        running.witness.promote("A", running.witness.state().epoch)
        thread.join(120)
    assert box["result"].status_code == 201 and box["result"].headers["x-standby-site"] == "A", box


# --- broken connections ----------------------------------------------------------------------------------------------


class CuttingProxy:
    """A TCP proxy in front of a site that, when asked, cuts the connection after the site has answered and before
    the answer reaches the front: the write was carried out, its answer lost."""

    def __init__(self, target_port: int):
        self.target_port, self.port, self.cuts = target_port, free_port(), 0
        self.cut_next = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self.loop).result(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def to_site() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def to_front() -> None:
            while data := await up_reader.read(65536):
                if self.cut_next.is_set():
                    self.cut_next.clear()
                    self.cuts += 1
                    writer.transport.abort()  # a reset: the front sees the connection break mid-request
                    up_writer.close()
                    return
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(to_site(), to_front(), return_exceptions=True)

    def stop(self) -> None:
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_a_write_whose_connection_broke_after_the_site_answered_is_sent_again_and_answered_once(pair, start_front):
    """The site carried the write out but its answer was lost to a reset: the front sends it again (same key) and
    the site answers it from its stored result; the client sees one 201, the site holds one row."""
    site_primary(pair, "A")
    proxy = CuttingProxy(pair.a.db.settings.site("A").http.port)
    try:
        via_proxy = pair.a.db.settings.site("A").model_copy(update={"http": HttpSettings(port=proxy.port)})
        running = start_front(sites={"A": via_proxy, "B": pair.b.db.settings.site("B")})
        key = f"front-cut-{uuid.uuid4().hex}"
        with httpx.Client(base_url=running.url, timeout=60) as client:
            proxy.cut_next.set()
            answer = post_declaration(client, pair, 5, key)
        assert proxy.cuts == 1
        assert answer.status_code == 201, answer.text
        assert answer.headers["idempotent-replayed"] == "true"  # the second send found the first one's result
        assert keys_at(pair, "A", [key]) == {key: 1}
        assert declaration_count(pair, "A", answer.json()["number"]) == 1
        assert metric(running.url, "front_held_total") == 1 and metric(running.url, "front_released_total") == 1
    finally:
        proxy.stop()


def test_a_read_whose_connection_broke_is_sent_once_more_at_once(pair, start_front):
    site_primary(pair, "A")
    proxy = CuttingProxy(pair.a.db.settings.site("A").http.port)
    try:
        via_proxy = pair.a.db.settings.site("A").model_copy(update={"http": HttpSettings(port=proxy.port)})
        running = start_front(sites={"A": via_proxy, "B": pair.b.db.settings.site("B")})
        with httpx.Client(base_url=running.url, timeout=60) as client:
            proxy.cut_next.set()
            shown = client.get("/v1/site", headers={"Authorization": f"Bearer {pair.token(6)}"})
        assert proxy.cuts == 1
        assert shown.status_code == 200 and shown.json()["site"] == "A", shown.text
        assert metric(running.url, "front_held_total") == 0  # sent again at once, never held
    finally:
        proxy.stop()


def test_a_read_no_primary_answers_is_answered_by_the_standby_and_says_so(pair, start_front):
    """A failover's gap: the witness still names A, whose address answers nothing; the read is served by B (a standby
    serves reads) and marked X-Read-From: standby, instead of 503 primary_unreachable. A write is still held."""
    site_primary(pair, "A")
    nowhere = pair.a.db.settings.site("A").model_copy(update={"http": HttpSettings(port=free_port())})
    running = start_front(sites={"A": nowhere, "B": pair.b.db.settings.site("B")}, hold_max_s=0.5)
    with httpx.Client(base_url=running.url, timeout=60) as client:
        token = {"Authorization": f"Bearer {pair.token(7)}"}
        shown = client.get("/v1/site", headers=token)
        assert shown.status_code == 200 and shown.json()["site"] == "B", shown.text
        assert (shown.headers["x-read-from"], shown.headers["x-standby-site"]) == ("standby", "B")
        assert metric(running.url, "front_standby_reads_total") == 1
        write = post_declaration(client, pair, 7)
        refusal(write, 503, "front_held_too_long")  # writes never go to a standby


# --- a site stops mid-stream -----------------------------------------------------------------------------------------


def test_a_site_stopped_mid_stream_its_writes_go_to_the_new_primary_and_none_is_doubled(pair, start_front):
    """Last in the module: it stops site A for good. Writes stream through the front; A stops (uvicorn shuts down,
    refusing new connections and closing idle ones); the witness names B; every write is answered 201, each once."""
    site_primary(pair, "A")
    running = start_front(hold_max_s=120)
    keys = [f"front-stop-{i}-{uuid.uuid4().hex}" for i in range(40)]
    acknowledged = threading.Semaphore(0)

    def send(i: int) -> httpx.Response:
        response = post_declaration(client, pair, i, keys[i])
        acknowledged.release()
        return response

    with httpx.Client(base_url=running.url, timeout=120) as client, ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(send, i) for i in range(len(keys))]
        for _ in range(10):
            assert acknowledged.acquire(timeout=120), "the first ten writes were not answered"
        pair.a.server.stop()  # A's HTTP server is gone mid-stream
        site_primary(pair, "B")
        name_primary(running.witness, "B")
        answers = [f.result() for f in futures]
    assert [r.status_code for r in answers] == [201] * len(keys), [r.text for r in answers if r.status_code != 201]
    sites = {r.headers["x-standby-site"] for r in answers}
    assert sites == {"A", "B"}, sites  # the stream really crossed from A to B
    at_a, at_b = keys_at(pair, "A", keys), keys_at(pair, "B", keys)
    assert not set(at_a) & set(at_b), "a write was carried out at both sites"
    assert {**at_a, **at_b} == {k: 1 for k in keys}, "a write was lost or carried out twice"
    for answer in answers:
        site = answer.headers["x-standby-site"]
        assert declaration_count(pair, site, answer.json()["number"]) == 1
    assert metric(running.url, "front_held_total") >= 1
