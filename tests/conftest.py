"""Shared fixtures: one Ray session for the whole run, real SQLite sites seeded with a small population, and a
site served over real HTTP by uvicorn with its Ray workers."""
from __future__ import annotations

import atexit
import random
import shutil
import socket
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from standby.api.auth import TokenEntry, TokenRegistry, token_digest
from standby.clearance.commands import Role
from standby.domain.risk import RiskRules, load_risk_rules
from standby.domain.states import SiteRole
from standby.domain.tariff import Tariff, load_tariff
from standby.reference.orgdata import OrgData, load_org_data
from standby.settings import Settings, load_settings
from standby.store.engine import make_engine
from standby.store.migrate import upgrade
from standby.store.schema import enterprises, officers
from standby.store.seed import seed
from standby.store.site import init_site
from tests.pg_fixtures import pg_cluster, pg_url  # noqa: F401  (PostgreSQL fixtures)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def org() -> OrgData:
    return load_org_data(REPO / "config" / "org")


@pytest.fixture(scope="session")
def tariff() -> Tariff:
    return load_tariff(REPO / "config" / "tariffs.yaml")


@pytest.fixture(scope="session")
def rules() -> RiskRules:
    return load_risk_rules(REPO / "config" / "risk_rules.yaml")


@pytest.fixture(scope="session")
def ray_session():
    """Local Ray, started once for the whole test session (ray.init costs ~5 s)."""
    from standby.ray_runtime import ensure_ray, shutdown_ray

    started = ensure_ray(num_cpus=2)
    yield
    if started:
        shutdown_ray()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



@dataclass
class SiteDb:
    """A real SQLite site database with reference data and a small synthetic population."""

    settings: Settings
    site_id: str
    url: str

    def engine(self, writer: bool = True):
        return make_engine(self.url, writer=writer)

    def active_enterprises(self, n: int) -> list[str]:
        engine = self.engine(writer=False)
        with engine.connect() as conn:
            codes = list(conn.execute(select(enterprises.c.tax_code).where(
                enterprises.c.status == "active", enterprises.c.tax_debt_days <= 90)
                .order_by(enterprises.c.tax_code).limit(n)).scalars())
        engine.dispose()
        return codes

    def blocked_enterprise(self, status: str = "suspended") -> str:
        engine = self.engine(writer=False)
        with engine.connect() as conn:
            code = conn.execute(select(enterprises.c.tax_code).where(enterprises.c.status == status)).scalar()
        engine.dispose()
        return code

    def officers_of(self, office: str, section: str) -> list[str]:
        engine = self.engine(writer=False)
        with engine.connect() as conn:
            ids = list(conn.execute(select(officers.c.officer_id).where(
                officers.c.office_code == office, officers.c.section == section).order_by(officers.c.position))
                .scalars())
        engine.dispose()
        return ids


def make_site_db(tmp: Path, org: OrgData, *, site_id: str = "A", role: SiteRole = SiteRole.PRIMARY,
                 enterprises_count: int = 3000, officers_per_section: int = 3, workers: int = 2,
                 url: str | None = None, site_digit: int = 1) -> SiteDb:
    sqlite_file = None if url else tmp / f"site-{site_id.lower()}.db"
    url = url or f"sqlite:///{sqlite_file}"
    config = tmp / f"settings-{site_id}.yaml"
    config.write_text(yaml.safe_dump({
        "root": str(REPO), "data_dir": str(tmp),
        "sites": {site_id: {"site_digit": site_digit, "database_url": url,
                            "http": {"host": "127.0.0.1", "port": free_port()}}},
        "ray": {"workers": workers}, "auth": {"tokens_file": str(tmp / "tokens.yaml")},
        "intake": {"call_timeout_s": 20, "call_attempts": 4},
    }))
    settings = load_settings(config)
    population = (site_id, role, enterprises_count, officers_per_section)
    if sqlite_file is None:
        build_site_db(url, org, *population)
    else:
        # seeding 3,000 enterprises costs ~0.7 s, and dozens of tests make a site
        built = built_once(("site", id(org), *population), lambda at: build_site_db(at, org, *population), keep=org)
        shutil.copyfile(built, sqlite_file)
    return SiteDb(settings, site_id, url)


def build_site_db(url: str, org: OrgData, site_id: str, role: SiteRole, enterprises_count: int,
                  officers_per_section: int) -> None:
    """The site database at `url` (empty) upgraded, initialised as `site_id` in `role` and seeded."""
    upgrade(url)
    engine = make_engine(url)
    init_site(engine, site_id, role, primary_site="A" if role is SiteRole.STANDBY else site_id)
    seed(engine, org, enterprises_count=enterprises_count, officers_per_section=officers_per_section,
         rng_seed=random.Random(site_id).randint(0, 10**6))
    engine.dispose()


_BUILT: dict[tuple, tuple[object, Path]] = {}


def built_once(key: tuple, build: Callable[[str], None], keep: object = None) -> Path:
    """The SQLite file `build(url)` makes, built once per test process for `key`, for tests to copy: a copy costs
    milliseconds where building costs seconds (migrations, seeding). The file is checkpointed (no WAL beside it), so
    a copy of the file alone is the whole database. `keep`: an object `key` names by id, kept alive with the file so
    that id is never another object's."""
    if key not in _BUILT:
        folder = Path(tempfile.mkdtemp(prefix="built-once-"))
        atexit.register(shutil.rmtree, folder, True)
        built = folder / "built.db"
        build(f"sqlite:///{built}")
        with closing(sqlite3.connect(built)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        wal = built.with_name("built.db-wal")
        assert not wal.exists() or not wal.stat().st_size, "the database is not all in its file"
        _BUILT[key] = (keep, built)
    return _BUILT[key][1]


@pytest.fixture
def site_db(tmp_path, org) -> SiteDb:
    return make_site_db(tmp_path, org)


class Tokens:
    """Tokens made for a test, registered with the served site: tokens.declarant(tax_code) etc."""

    def __init__(self):
        self._made: dict[tuple[Role, str], str] = {}
        self._lock = threading.Lock()  # tokens are made by client threads while the sites look them up

    def _get(self, role: Role, subject: str) -> str:
        with self._lock:
            return self._made.setdefault((role, subject), f"t-{role.value}-{subject}-{len(self._made)}")

    def declarant(self, tax_code: str) -> str:
        return self._get(Role.DECLARANT, tax_code)

    def officer(self, officer_id: str) -> str:
        return self._get(Role.OFFICER, officer_id)

    def operator(self, name: str = "ops") -> str:
        return self._get(Role.OPERATOR, name)

    def principal(self, token: str):
        """Serves as the site's token registry, so a token made mid-test is known at once."""
        with self._lock:
            made = list(self._made.items())
        return TokenRegistry([TokenEntry(token_digest(t), r, s) for (r, s), t in made]).principal(token)

    def __len__(self) -> int:
        return len(self._made)

    def publish(self, timeout_s: float = 30.0) -> None:
        """Nothing to do: the in-process site asks this object (a site in processes of its own reads a file, see
        tests.integration.served_processes.FileTokens)."""


@dataclass
class ServedSite:
    db: SiteDb
    site: object  # standby.site_process.Site
    server: object  # BackgroundServer
    tokens: Tokens

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()
        self.site.close()


def serve_site(db: SiteDb) -> ServedSite:
    from standby.site_process import BackgroundServer, build_site

    site = build_site(db.settings, db.site_id)
    tokens = Tokens()
    site.services.tokens = tokens
    http = db.settings.site(db.site_id).http
    server = BackgroundServer(site.app, http.host, http.port).start()
    return ServedSite(db, site, server, tokens)


@pytest.fixture(scope="session")
def served(tmp_path_factory, org, ray_session) -> ServedSite:
    """One primary site on real SQLite with Ray workers behind real uvicorn, shared by the HTTP tests."""
    served = serve_site(make_site_db(tmp_path_factory.mktemp("site"), org))
    yield served
    served.stop()


# The suite runs on two xdist workers, each taking whole files in collection order (pyproject's addopts, with
# --no-loadscope-reorder: xdist's default order, most tests first, put the one-test fault files of minutes last).
# Taken in plain path order, the longest files came last and the run ended with one worker alone on a minutes-long
# file; the longest files go first (longest-processing-time-first), the many short ones fill in at the end. By their
# measured time in a full run (most first); files not listed keep their order after these.
LONGEST_FIRST = (
    "tests/integration/test_drill.py", "tests/integration/test_drill_existing.py",
    "tests/fault/test_switchover_resume.py", "tests/fault/test_runbook_resume.py",
    "tests/integration/test_switchover.py", "tests/fault/test_failback_resume.py",
    "tests/integration/test_org_restructure_switchover.py", "tests/fault/test_replication_kill.py",
    "tests/fault/test_worker_death.py", "tests/integration/test_serve_processes.py",
    "tests/integration/test_switchover_postgres.py", "tests/fault/test_failover_resume.py",
    "tests/integration/test_loadtest_cli.py", "tests/integration/test_failback_postgres.py",
    "tests/fault/test_org_restructure_resume.py", "tests/integration/test_ray_cluster.py",
    "tests/integration/test_failback.py", "tests/integration/test_failover.py",
    "tests/fault/test_partitioned_primary.py", "tests/fault/test_pg_stream_kill.py",
    "tests/integration/test_reverse_stream.py", "tests/integration/test_replication_postgres.py",
    "tests/integration/test_replication_sqlite.py", "tests/integration/test_failover_postgres.py",
    "tests/integration/test_org_restructure.py", "tests/integration/test_locust.py",
    "tests/integration/test_lifecycle.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: a file stays whole
