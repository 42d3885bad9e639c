"""A primary cut off from the witness fences itself before anyone may take its lease, and learns of the new epoch
when it can reach the witness again.

The witness is a PostgreSQL database (the suite's throwaway cluster). Site A, the primary, is a real `standbyctl
serve` process whose settings reach the witness only through a TCP proxy in this test; site B (its standby by a
replicator process A -> B) and the test reach the witness directly. Clients write straight to A (pre-declarations,
and registrations of the numbers they got). Then the proxy is cut: A's open witness connections are closed and new
ones hang. A keeps answering clients, but once its self-fencing deadline (the last `lease_until` its lease keeper
wrote) passes it refuses every write (`lease_expired`) while the witness still holds its lease for fence_margin_s
more. After the witness's lease expired (cutover.witness.lease.lease_expired), B is promoted (witness CAS to epoch 2,
B's row promoted and resumed; B first applied all A committed, and the replicator was stopped, as a failover's
stop_stream does) and takes writes, while clients go on writing to A.

Proved: A's deadline came at least fence_margin_s before the witness's lease expiry; every declaration and
idempotency record A holds was written before its deadline, every 201 it gave is among them, every request sent to
A at or after the deadline got 503 lease_expired (or fenced / stale_epoch), and every declaration on both sites has
the same contents on both. Then the proxy is restored: A's next renewal is refused under epoch 2 and A fences its own
control row (FENCED, naming B). Costs about 30-40 s, mostly the rig (seeding, a replicator and a serve process)."""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from cutover.witness import open_witness
from cutover.witness.lease import lease_expired
from replication.progress import wait_until_applied
from replication.sources import open_source, stream_name
from standby.domain.states import IntakeState, Kind, SiteRole
from standby.store.schema import declarations, idempotency_keys
from standby.store.site import promote, resume
from standby.synthetic import make_declaration_payload
from tests.integration.switchover_rig import OFFICES, build_rig, stop_replicators

pytestmark = [pytest.mark.fault, pytest.mark.postgres, pytest.mark.ray, pytest.mark.timeout(600)]

# The rule renew + 2 * retry <= ttl - margin holds (0.25 + 0.6 <= 1.2); A stops writing 0.3 s before the witness's
# lease expires, 1.2 s after its last renewal started.
LEASE = {"ttl_s": 1.5, "renew_interval_s": 0.25, "retry_timeout_s": 0.3, "fence_margin_s": 0.3}
REFUSED_AFTER_DEADLINE = {"lease_expired", "fenced", "stale_epoch"}
CLIENTS = 3


class CuttableProxy:
    """A TCP proxy to the witness's server. `cut()` closes every connection it carries and leaves new ones hanging
    (accepted, never forwarded or answered), as a partition does; `restore()` drops the hanging ones and forwards
    again."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.forwarding = threading.Event()
        self.forwarding.set()
        self._open: list[socket.socket] = []
        self._hanging: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="witness-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                if not self.forwarding.is_set():
                    self._hanging.append(client)
                    continue
                upstream = socket.create_connection(self.upstream)
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            _close(s)

    def cut(self) -> None:
        with self._lock:
            self.forwarding.clear()
            for s in self._open:
                _close(s)
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            for s in self._hanging:
                _close(s)
            self._hanging.clear()
            self.forwarding.set()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self.restore()
        self.listener.close()
        self._thread.join(5)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@dataclass
class Answer:
    sent_at: float
    op: str
    status: int
    code: str | None
    number: str | None


@dataclass
class Clients:
    """Declarants writing straight to one site from threads: a pre-declaration, then a registration of a number
    they were given, and so on; every answer recorded with the wall-clock time its request was sent."""

    url: str
    tokens: dict[str, str]  # tax code -> declarant token
    tariff: object
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> "Clients":
        for i in range(CLIENTS):
            self._threads.append(threading.Thread(target=self._client, args=(i,), daemon=True))
            self._threads[-1].start()
        return self

    def stop(self) -> list[Answer]:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        assert not any(t.is_alive() for t in self._threads), "a client did not stop"
        return self.answers

    def _client(self, index: int) -> None:
        import random
        rng, codes, unregistered, n = random.Random(index), sorted(self.tokens), [], 0
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self._stop.is_set():
                tax_code = codes[(index * 31 + n) % len(codes)]
                headers = {"Authorization": f"Bearer {self.tokens[tax_code]}", "Idempotency-Key": f"p-{index}-{n}"}
                sent_at = time.time()
                if n % 2 and unregistered:
                    number, tax_code = unregistered.pop(0)
                    headers["Authorization"] = f"Bearer {self.tokens[tax_code]}"
                    reply, op = http.post(f"/v1/declarations/{number}/registration", headers=headers), "register"
                else:
                    body = make_declaration_payload(rng, Kind.IMPORT, tax_code, OFFICES[n % len(OFFICES)], self.tariff)
                    reply, op = http.post("/v1/declarations", json=body, headers=headers), "pre_declare"
                error = reply.json().get("error") if reply.status_code >= 400 else None
                number = reply.json().get("number") if reply.status_code < 300 else None
                if op == "pre_declare" and number:
                    unregistered.append((number, tax_code))
                self.answers.append(Answer(sent_at, op, reply.status_code, error and error["code"], number))
                n += 1
                time.sleep(0.01)


def wait_for(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def caught_up(rig, b_engine) -> None:
    """Wait until B applied all A committed (not rig.wait_caught_up: its Sites would open the witness through the
    cut proxy)."""
    source = open_source(rig.settings.database_url("A"), "A", "B")
    try:
        wait_until_applied(source, b_engine, stream_name("A", "B"), timeout_s=60)
    finally:
        source.close()


def rows_of(engine, table, key: str) -> dict[str, dict]:
    with engine.connect() as conn:
        return {r[key]: dict(r) for r in conn.execute(select(table)).mappings()}


def test_a_primary_cut_off_from_the_witness_accepts_nothing_after_its_deadline(tmp_path, org, tariff, pg_url,
                                                                               ray_session):
    import ray

    witness_url = make_url(pg_url)
    proxy = CuttableProxy((witness_url.host, witness_url.port))
    through_proxy = witness_url.set(port=proxy.port).render_as_string(hide_password=False)
    direct = open_witness(pg_url)  # the test's and B's way to the witness
    rig = build_rig(tmp_path, org, enterprises_count=300, witness_url=through_proxy, serve_as_process=("A",),
                    ray_address=ray.get_runtime_context().gcs_address, lease=LEASE)
    a_engine, b_engine, b_writer = rig.engine("A"), rig.engine("B"), rig.engine("B", writer=True)
    clients = None
    try:
        wait_for(lambda: rig.control("A").lease_until is not None, "A's serve keeps no lease")
        tokens = {code: rig.tokens.declarant(code) for code in rig.tax_codes()}
        clients = Clients(rig.site_url("A"), tokens, tariff).start()
        wait_for(lambda: sum(a.status == 201 for a in clients.answers) >= 20, "A took no writes")

        proxy.cut()
        wait_for(lambda: lease_expired(direct.state(), time.time()), "the witness's lease never expired")
        deadline = rig.control("A").lease_until  # A's keeper cannot write another: it never renewed since
        last_lease = direct.state()
        assert deadline <= last_lease.lease_expires_at - LEASE["fence_margin_s"] + 1e-6, \
            "A fenced itself at least fence_margin_s before the witness's lease expired"
        readyz = httpx.get(f"{rig.site_url('A')}/readyz").json()
        assert (readyz["ready"], readyz["code"], readyz["role"]) == (False, "lease_expired", "primary")

        caught_up(rig, b_engine)  # a failover's stop_stream: B has all A committed, then the stream stops
        stop_replicators(rig.tmp, rig.config)
        assert direct.promote("B", expected_epoch=1).epoch == 2
        promote(b_writer, "B", epoch=2)
        resume(b_writer, "B", epoch=2)
        b_numbers = [_declare_at(rig.site_url("B"), tokens, tariff, i) for i in range(3)]
        time.sleep(1.0)  # clients keep writing to A meanwhile
        answers = clients.stop()
        clients = None
        metrics = httpx.get(f"{rig.site_url('A')}/metrics").text

        a_rows, b_rows = rows_of(a_engine, declarations, "number"), rows_of(b_engine, declarations, "number")
        with a_engine.connect() as conn:
            last_key_at = conn.execute(select(func.max(idempotency_keys.c.created_at))).scalar()
        assert max(r["updated_at"] for r in a_rows.values()) < deadline, "A wrote a declaration after its deadline"
        assert last_key_at < deadline, "A wrote an idempotency record after its deadline"
        assert {r["epoch"] for r in a_rows.values()} == {1}
        accepted = [a for a in answers if a.status < 300]
        assert {a.number for a in accepted if a.op == "pre_declare"} <= set(a_rows), "every 201 of A is A's"
        late = [a for a in answers if a.sent_at >= deadline]
        assert len(late) >= 10, f"only {len(late)} requests reached A after its deadline"
        wrong = [(a.op, a.status, a.code) for a in late if (a.status, a.code in REFUSED_AFTER_DEADLINE) != (503, True)]
        assert wrong == [], f"A answered requests sent after its deadline with {wrong[:5]}"
        assert all(n.startswith("2") and b_rows[n]["epoch"] == 2 and n not in a_rows for n in b_numbers)
        differing = [n for n in set(a_rows) & set(b_rows) if a_rows[n] != b_rows[n]]
        assert differing == [], f"declarations on both sites with different contents: {differing[:5]}"
        assert {n for n in b_rows if n.startswith("1")} == set(a_rows), "B has exactly what A committed"
        assert _sample(metrics, "standby_lease_remaining_seconds", site="A") == 0.0
        assert _sample(metrics, "standby_lease_renewal_failures_total", site="A", reason="unavailable") > 0

        proxy.restore()
        wait_for(lambda: rig.control("A").intake_state is IntakeState.FENCED,
                 "A never learnt of epoch 2 once it reached the witness again")
        fenced = rig.control("A")
        assert (fenced.role, fenced.fenced_epoch, fenced.primary_site, fenced.lease_until) == \
            (SiteRole.STANDBY, 2, "B", None)
        assert httpx.get(f"{rig.site_url('A')}/readyz").json()["code"] == "fenced"
        assert (direct.state().primary_site, direct.state().epoch) == ("B", 2)
    finally:
        if clients is not None:
            clients.stop()
        for engine in (a_engine, b_engine, b_writer):
            engine.dispose()
        rig.close()
        direct.close()
        proxy.close()


def _declare_at(url: str, tokens: dict[str, str], tariff, i: int) -> str:
    import random
    tax_code = sorted(tokens)[i]
    body = make_declaration_payload(random.Random(i), Kind.EXPORT, tax_code, OFFICES[0], tariff)
    reply = httpx.post(f"{url}/v1/declarations", json=body, timeout=30,
                       headers={"Authorization": f"Bearer {tokens[tax_code]}", "Idempotency-Key": f"b-{i}"})
    assert reply.status_code == 201, reply.text
    return reply.json()["number"]


def _sample(metrics: str, name: str, **labels) -> float:
    [value] = [s.value for family in text_string_to_metric_families(metrics) for s in family.samples
               if s.name == name and s.labels == labels]
    return value
