"""Two sites, a witness, the front and replication between them, with declarant traffic going through the front and a
client-side ledger of every acknowledged number. Shared by the switchover tests (integration and fault).

The databases are the embedded default (SQLite files in the test's folder) unless `build_rig` is given the sites'
and the witness's URLs (PostgreSQL databases of the suite's throwaway cluster); the sites run on the test session's
Ray either way."""
from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from sqlalchemy import select
from tenacity import Retrying, stop_after_delay, wait_fixed

from cutover.actions.sites import Sites, running_replicator
from cutover.front.app import build_front
from cutover.witness import open_witness
from loadtests.client import SiteClient
from standby.api.auth import token_digest
from replication.progress import wait_until_applied
from replication.sources import stream_name
from replication.streams import retire_stream
from replication.verify import verify
from standby.domain.states import Kind, SiteRole
from standby.settings import load_settings
from standby.site_process import BackgroundServer, build_site
from standby.store.engine import make_engine
from standby.store.migrate import upgrade
from standby.store.schema import declarations, enterprises
from standby.store.seed import seed
from standby.store.site import init_site, read_control
from standbyctl.sync_positions import sync_positions
from standby.synthetic import make_declaration_payload
from tests.conftest import REPO, Tokens, free_port

OFFICES = ("01CA", "79CA", "31CA", "48CA")


@dataclass
class Ledger:
    """What clients were told: every acknowledged declaration, and every answer that was not a success."""

    acknowledged: dict[str, dict] = field(default_factory=dict)  # number -> what the client sent and was told
    errors: list[tuple[int, str]] = field(default_factory=list)
    sent: int = 0


class Traffic:
    """Declarants pre-declaring through the front from a thread with its own event loop, until stopped."""

    def __init__(self, front_url: str, tokens: Tokens, tax_codes: list[str], tariff, *, clients: int = 4,
                 pause_s: float = 0.03):
        self.front_url, self.tokens, self.tax_codes, self.tariff = front_url, tokens, tax_codes, tariff
        self.clients, self.pause_s = clients, pause_s
        self.ledger = Ledger()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="traffic", daemon=True)

    def start(self) -> "Traffic":
        self._thread.start()
        return self

    def stop(self) -> Ledger:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "traffic did not stop"
        return self.ledger

    async def _main(self) -> None:
        client = SiteClient(self.front_url, max_connections=self.clients * 2, timeout_s=180)  # > any hold
        try:
            await asyncio.gather(*(self._client(client, i) for i in range(self.clients)))
        finally:
            await client.close()

    async def _client(self, client: SiteClient, index: int) -> None:
        rng = random.Random(index)
        n = 0
        while not self._stop.is_set():
            tax_code = self.tax_codes[(index * 7919 + n) % len(self.tax_codes)]
            office = OFFICES[n % len(OFFICES)]
            body = make_declaration_payload(rng, Kind.IMPORT if n % 3 else Kind.EXPORT, tax_code, office, self.tariff)
            key = f"sw-{index}-{n}"
            self.ledger.sent += 1
            reply = await client.pre_declare(self.tokens.declarant(tax_code), body, key=key)
            if reply.status == 201:
                self.ledger.acknowledged[reply.body["number"]] = {
                    "key": key, "enterprise_tax_code": tax_code, "office_code": office, "kind": body["kind"],
                    "total_vnd": reply.body.get("total_vnd")}
            else:
                self.ledger.errors.append((reply.status, str(reply.body)[:300]))
            n += 1
            await asyncio.sleep(self.pause_s)


@dataclass
class Rig:
    tmp: Path
    config: Path
    settings: object
    tokens: Tokens
    served: dict = field(default_factory=dict)  # site id -> (Site, BackgroundServer)
    front: BackgroundServer | None = None
    processes: dict = field(default_factory=dict)  # site id -> Popen of `standbyctl serve` (serve_as_process)
    positions: list = field(default_factory=list)  # synchronous mode's position readers, closed with the rig

    @property
    def front_url(self) -> str:
        return self.front.url

    def site_url(self, site_id: str) -> str:
        http = self.settings.site(site_id).http
        return f"http://{http.host}:{http.port}"

    def witness(self):
        return open_witness(self.settings.witness_url, root=self.settings.root)

    def sites(self) -> Sites:
        return Sites(self.settings, self.witness(), config_path=self.config, partitions=2)

    def engine(self, site_id: str, writer: bool = False):
        return make_engine(self.settings.database_url(site_id), writer=writer)

    def control(self, site_id: str):
        engine = self.engine(site_id)
        try:
            return read_control(engine, site_id)
        finally:
            engine.dispose()

    def tax_codes(self, n: int = 60) -> list[str]:
        engine = self.engine("A")
        with engine.connect() as conn:
            codes = list(conn.execute(select(enterprises.c.tax_code).where(
                enterprises.c.status == "active", enterprises.c.tax_debt_days <= 90)
                .order_by(enterprises.c.tax_code).limit(n)).scalars())
        engine.dispose()
        return codes

    def wait_caught_up(self, primary: str, standby: str, timeout_s: float = 60) -> int:
        sites = self.sites()
        source = sites.change_source(primary, standby)
        try:
            return wait_until_applied(source, sites.engine(standby, writer=False), stream_name(primary, standby),
                                      timeout_s=timeout_s)
        finally:
            source.close()
            sites.close()

    def verify(self, primary: str, standby: str):
        sites = self.sites()
        try:
            return sites.verify(primary, standby, settle_timeout_s=60)
        finally:
            sites.close()

    def stored(self, site_id: str) -> dict[str, dict]:
        engine = self.engine(site_id)
        with engine.connect() as conn:
            rows = conn.execute(select(declarations.c.number, declarations.c.enterprise_tax_code,
                                       declarations.c.office_code, declarations.c.kind)).mappings().all()
        engine.dispose()
        return {r["number"]: dict(r) for r in rows}

    def publish_tokens(self, tax_codes: list[str]) -> None:
        """Make a declarant token for each tax code and write every token made so far to the tokens file, which a
        site served as its own process reads (within about a second of the change)."""
        for tax_code in tax_codes:
            self.tokens.declarant(tax_code)
        entries = [{"sha256": token_digest(t), "role": r.value, "subject": s}
                   for (r, s), t in self.tokens._made.items()]
        path = self.settings.path(self.settings.auth.tokens_file)
        path.with_suffix(".tmp").write_text(yaml.safe_dump({"tokens": entries}))
        path.with_suffix(".tmp").replace(path)

    def kill_site(self, site_id: str) -> None:
        """kill -9 the process group of a site served as its own process (its Ray workers, owned by it, go too)."""
        proc = self.processes.pop(site_id)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for site_id in list(self.processes):
            self.kill_site(site_id)
        stop_replicators(self.tmp, self.config)
        if self.front:
            self.front.stop()
        for site, server in self.served.values():
            server.stop()
            site.close()
        self.served.clear()
        for positions in self.positions:
            positions.close()
        if not self.settings.database_url("A").startswith("sqlite"):
            for source, target in (("A", "B"), ("B", "A")):  # a PostgreSQL slot would keep its database alive
                retire_stream(self.settings.database_url(source), self.settings.database_url(target),
                              stream_name(source, target))


def build_rig(tmp: Path, org, *, enterprises_count: int = 600, site_urls: dict[str, str] | None = None,
              witness_url: str | None = None, ray_address: str | None = None, front_hold_s: float = 30,
              sync: dict | None = None, serve_as_process: tuple[str, ...] = (), lease: dict | None = None) -> Rig:
    """Site A primary (epoch 1 in the witness), site B its standby by a replicator process A → B, both served over
    HTTP from this process with one shared token registry, and the front on its own port.

    `site_urls` ({"A": url, "B": url}) and `witness_url` name empty databases to use (e.g. PostgreSQL); by default
    each is a SQLite file in `tmp`. `ray_address`: the Ray cluster the replicator processes join (e.g. the test
    session's, which saves each a Ray start of its own); by default each starts a local Ray. `front_hold_s`: how long
    the front holds a write that no primary can take. `sync`: the settings' `sync` section (synchronous mode), e.g.
    {"pairs": [["A", "B"]]}; each site is then built with its sync positions (as `standbyctl serve` does).
    `serve_as_process`: sites served by a `standbyctl serve` process of their own (so a test can kill -9 them), which
    joins `ray_address` and reads the declarant tokens of `rig.tax_codes()` from the tokens file. `lease`: the
    settings' lease section (short timings for tests)."""
    site_urls = site_urls or {s: f"sqlite:///{tmp / f'site-{s.lower()}.db'}" for s in ("A", "B")}
    config = tmp / "switchover.yaml"
    config.write_text(yaml.safe_dump({
        "root": str(REPO), "data_dir": str(tmp),
        "sites": {s: {"site_digit": d, "database_url": site_urls[s],
                      "http": {"host": "127.0.0.1", "port": free_port()}} for s, d in (("A", 1), ("B", 2))},
        "witness_url": witness_url or f"sqlite:///{tmp / 'witness.db'}",
        "front": {"host": "127.0.0.1", "port": free_port(), "hold_max_s": front_hold_s},
        "ray": {"workers": 1, **({"address": ray_address} if ray_address else {})}, "auth": {"tokens_file": str(tmp / "tokens.yaml")},
        "intake": {"call_timeout_s": 20, "call_attempts": 4},
        "replication": {"metrics_port": 0},  # replicators a runbook starts serve no /metrics (9464 may be taken)
        **({"sync": sync} if sync else {}),
        **({"lease": lease} if lease else {}),
    }))
    settings = load_settings(config)
    for site_id, role in (("A", SiteRole.PRIMARY), ("B", SiteRole.STANDBY)):
        url = settings.database_url(site_id)
        upgrade(url)
        engine = make_engine(url)
        init_site(engine, site_id, role, primary_site="A")
        if role is SiteRole.PRIMARY:
            seed(engine, org, enterprises_count=enterprises_count, officers_per_section=2, rng_seed=7)
        engine.dispose()
    witness = open_witness(settings.witness_url, root=settings.root)
    witness.initialise("A")
    witness.close()
    rig = Rig(tmp, config, settings, Tokens())
    try:
        sites = rig.sites()
        sites.start_replicator("A", "B")
        sites.wait_replicating("A", "B", timeout_s=120)
        sites.close()
        rig.wait_caught_up("A", "B")
        for site_id in ("A", "B"):
            if site_id in serve_as_process:
                rig.publish_tokens(rig.tax_codes())
                rig.processes[site_id] = serve_process(rig, site_id)
                continue
            positions = sync_positions(settings, site_id)
            if positions is not None:
                rig.positions.append(positions)
            site = build_site(settings, site_id, sync_positions=positions)
            site.services.tokens = rig.tokens
            http = settings.site(site_id).http
            rig.served[site_id] = (site, BackgroundServer(site.app, http.host, http.port).start())
        witness = rig.witness()
        rig.front = BackgroundServer(build_front(settings, witness.state), settings.front.host,
                                     settings.front.port).start()
    except BaseException:
        rig.close()
        raise
    return rig


def serve_process(rig: Rig, site_id: str, timeout_s: float = 120) -> subprocess.Popen:
    """`standbyctl serve --site SITE` in a session of its own (logging to serve-SITE.log), once it answers /healthz."""
    log = rig.tmp / f"serve-{site_id}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "standbyctl.cli", "--config", str(rig.config), "serve",
                                 "--site", site_id], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    http = rig.settings.site(site_id).http
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"http://{http.host}:{http.port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError(f"site {site_id} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def running_replicators(tmp: Path) -> dict[str, int]:
    """Stream name -> pid of each replicator process the rig or a runbook started that still runs."""
    running = {}
    for pid_file in tmp.glob("replicate-*.pid"):
        pid = running_replicator(pid_file)
        if pid:
            running[pid_file.stem.removeprefix("replicate-")] = pid
    return running


def replicator_processes(config: Path) -> list[tuple[str, int]]:
    """(stream, pid) of every live `standbyctl --config CONFIG replicate` process, found by its command line whether
    or not a pid file names it (a runbook killed between spawning one and writing its pid file leaves one)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0")]
        except (OSError, UnicodeDecodeError):
            continue
        if "replicate" in argv and "--config" in argv and argv[argv.index("--config") + 1] == str(config):
            found.append((stream_name(argv[argv.index("--from") + 1], argv[argv.index("--to") + 1]), int(proc.name)))
    return sorted(found)


def on_step_intent(monkeypatch, step: str, act) -> None:
    """Call `act()` once, right after a runbook run in this process journals the intent of `step` (the step has not
    started): a write or a fault at an exact point of a run, whatever the timing of the traffic."""
    from cutover.runbook.executor import Executor
    original, done = Executor._append, []

    def append(self, run_id, step_id, phase, detail):
        seq = original(self, run_id, step_id, phase, detail)
        if step_id == step and phase == "intent" and not done:
            done.append(act())
        return seq

    monkeypatch.setattr(Executor, "_append", append)


def declare_on_site(rig: Rig, site_id: str, tariff, tax_code: str, key: str) -> httpx.Response:
    """Pre-declare straight on one site's API (not through the front), with its own Idempotency-Key."""
    body = make_declaration_payload(random.Random(key), Kind.IMPORT, tax_code, "01CA", tariff)
    return httpx.post(f"{rig.site_url(site_id)}/v1/declarations", json=body, timeout=30, headers={
        "Authorization": f"Bearer {rig.tokens.declarant(tax_code)}", "Idempotency-Key": key})


def pause_replicators(rig: Rig, *streams: str) -> None:
    """SIGSTOP the running replicators of `streams` (all when none named), each at a moment it holds no write lock
    on its source: a replicator writes its source's heartbeat and trims its change log there, and one stopped
    inside such a transaction would stall the source site's own writes (SQLite: the database's one write lock;
    PostgreSQL: the control row it reads FOR SHARE). Stopped inside one, it is let go on and stopped again."""
    for stream, pid in running_replicators(rig.tmp).items():
        if streams and stream not in streams:
            continue
        engine = rig.engine(stream.split("-to-")[0])
        try:
            for attempt in Retrying(stop=stop_after_delay(30), wait=wait_fixed(0.02), reraise=True):
                with attempt:
                    os.killpg(pid, signal.SIGSTOP)
                    if not _source_write_free(engine):
                        os.killpg(pid, signal.SIGCONT)
                        raise TimeoutError(f"replicator {stream} holds a lock on its source")
        finally:
            engine.dispose()


def _source_write_free(engine) -> bool:
    """True when a write on the engine's database could start at once (nobody holds what a write needs)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "sqlite":
            cursor.execute("PRAGMA busy_timeout = 0")
            cursor.execute("BEGIN IMMEDIATE")
        else:
            cursor.execute("SELECT 1 FROM site_control FOR UPDATE NOWAIT")
        return True
    except engine.dialect.dbapi.OperationalError:
        return False
    finally:
        raw.rollback()
        raw.close()


def stop_replicators(tmp: Path, config: Path | None = None) -> None:
    def running() -> set[int]:
        return set(running_replicators(tmp).values()) | {pid for _, pid in (replicator_processes(config)
                                                                             if config else [])}
    for pid in running():
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 30
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)


def ledger_problems(ledger: Ledger, stored: dict[str, dict]) -> list[str]:
    """What the final primary holds against what clients were told, as one sentence per problem (none: nothing lost
    or doubled). The rig's sites hold no declarations but the traffic's, so: every acknowledged number is stored
    once with what its client sent (lost otherwise), no declaration is stored that no client was told of (a request
    carried out twice leaves one), and every request that was answered got a number of its own."""
    problems = []
    for number, told in ledger.acknowledged.items():
        row = stored.get(number)
        if row is None:
            problems.append(f"{number} was acknowledged to {told['key']} but is not on the final primary")
        elif (row["enterprise_tax_code"], row["office_code"], row["kind"]) != (
                told["enterprise_tax_code"], told["office_code"], told["kind"]):
            problems.append(f"{number} is stored as {row}, not as {told}")
    extra = sorted(set(stored) - set(ledger.acknowledged))
    if extra:
        problems.append(f"{len(extra)} declarations stored that no client was told of (doubled?): {extra[:5]}")
    answered = ledger.sent - len(ledger.errors)
    if len(ledger.acknowledged) != answered:
        problems.append(f"{answered} requests were acknowledged but only {len(ledger.acknowledged)} distinct numbers "
                        f"were given")
    return problems
