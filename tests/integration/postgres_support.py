"""Fixtures and helpers of the PostgreSQL store tests: a migrated, seeded database per test and a real pipeline."""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, func, select

from standby.clearance.commands import Command, Op, Outcome, Principal, Role
from standby.clearance.pipeline import ClearancePipeline
from standby.domain.risk import load_risk_rules
from standby.domain.states import Kind, SiteRole
from standby.domain.tariff import load_tariff
from standby.reference.orgdata import OrgData, load_org_data
from standby.store.engine import make_engine
from standby.store.migrate import upgrade
from standby.store.schema import (
    customs_offices,
    declarations,
    enterprises,
)
from standby.store.seed import seed
from standby.store.site import init_site
from standby.synthetic import make_declaration_payload

REPO = Path(__file__).resolve().parents[2]
ORG_DIR = REPO / "config" / "org"
TARIFF = load_tariff(REPO / "config" / "tariffs.yaml")
RULES = load_risk_rules(REPO / "config" / "risk_rules.yaml")
ENTERPRISES = 3000
OFFICERS_PER_SECTION = 3
SITE, DIGIT = "A", 1
OPERATOR = Principal(Role.OPERATOR, "t")


# --- fixtures and helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def org() -> OrgData:
    return load_org_data(ORG_DIR)


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    """A migrated, empty PostgreSQL database (no control row, no data)."""
    upgrade(pg_url)
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


@pytest.fixture
def site(engine: Engine, org: OrgData) -> Engine:
    """Site A as primary, with the reference data, 3,000 enterprises and 3 officers per office section."""
    init_site(engine, SITE, SiteRole.PRIMARY)
    seed(engine, org, enterprises_count=ENTERPRISES, officers_per_section=OFFICERS_PER_SECTION)
    return engine


def pipeline(engine: Engine, site_id: str = SITE, digit: int = DIGIT, **kw) -> ClearancePipeline:
    return ClearancePipeline(engine, site_id, digit, TARIFF, RULES, **kw)


def rows(engine: Engine, query) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def count(engine: Engine, table, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar()


def declaration(engine: Engine, base: str) -> dict:
    (row,) = rows(engine, select(declarations).where(declarations.c.base == base))
    return row


def eligible_tax_codes(engine: Engine) -> list[str]:
    """Enterprises that may register: active, tax overdue at most 90 days."""
    with engine.connect() as conn:
        return list(conn.execute(select(enterprises.c.tax_code).where(
            enterprises.c.status == "active", enterprises.c.tax_debt_days <= 90).order_by(enterprises.c.tax_code)
        ).scalars())


def office_codes(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(customs_offices.c.code).order_by(customs_offices.c.code)).scalars())


def pre_declarations(engine: Engine, n: int, rng: random.Random, key_prefix: str,
                     principal: Principal = OPERATOR, offices: list[str] | None = None) -> list[Command]:
    """`n` IDA/EDA commands for eligible enterprises at random offices, payloads from the synthetic generator."""
    tax_codes, offices = eligible_tax_codes(engine), offices or office_codes(engine)
    assert len(tax_codes) > ENTERPRISES * 0.9
    commands = []
    for i in range(n):
        kind = Kind.IMPORT if rng.random() < 0.7 else Kind.EXPORT
        office = rng.choice(offices)
        payload = make_declaration_payload(rng, kind, rng.choice(tax_codes), office, TARIFF)
        commands.append(Command(Op.PRE_DECLARE, principal, f"{key_prefix}-{i}", payload, office))
    return commands


def by_number(op: Op, number: str, office: str, key: str, principal: Principal = OPERATOR, **extra) -> Command:
    return Command(op, principal, key, {"number": number, **extra}, office)


def assert_all(outcomes: list[Outcome], status: int) -> None:
    bad = [(o.status, o.body) for o in outcomes if o.status != status]
    assert not bad, f"{len(bad)} of {len(outcomes)} outcomes were not {status}; first: {bad[:3]}"


class Interleave:
    """Runs worker B's call at the moment worker A's engine is about to send a statement starting with `prefix`,
    inside A's open transaction, then lets A go on. B either completes (nothing in its way) or waits on a row lock
    A holds (A and B correctly serialised): A continues in both cases, and B finishes once A commits."""

    def __init__(self, engine_a: Engine, prefix: str, b_call, observer: Engine):
        self.engine_a, self.prefix, self.b_call, self.observer = engine_a, prefix.upper(), b_call, observer
        self.fired = threading.Event()
        self.b_result: list = []
        self.b_error: list[BaseException] = []
        self.b_waited_on_lock = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Interleave":
        event.listen(self.engine_a, "before_cursor_execute", self._hook)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(self.engine_a, "before_cursor_execute", self._hook)
        if self._thread is not None:
            self._thread.join(timeout=60)
            assert not self._thread.is_alive(), "worker B never finished"
        assert not self.b_error, self.b_error

    def _run_b(self) -> None:
        try:
            self.b_result.extend(self.b_call())
        except BaseException as exc:  # noqa: BLE001 - re-raised in __exit__
            self.b_error.append(exc)

    def _hook(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self.fired.is_set() or not statement.lstrip().upper().startswith(self.prefix):
            return
        self.fired.set()
        self._thread = threading.Thread(target=self._run_b)
        self._thread.start()
        deadline = time.monotonic() + 30
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(timeout=0.01)
            with self.observer.connect() as obs:
                if obs.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                       "AND datname = current_database()").scalar():
                    self.b_waited_on_lock = True
                    return



def run_workers(work: Callable[[str], None], names, engines: dict[str, Engine], timeout_s: float = 120) -> None:
    """Run `work(name)` for each name in its own thread, wait for all, dispose `engines`, and re-raise the first
    failure of any worker (so a worker's assertion fails the test)."""
    errors: list[BaseException] = []

    def guarded(name: str) -> None:
        try:
            work(name)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(name,)) for name in names]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=timeout_s)
    finally:
        for engine in engines.values():
            engine.dispose()
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a worker did not finish"
