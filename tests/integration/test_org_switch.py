"""cutover.orgchange.switch on a real site database, SQLite and PostgreSQL: prepare, a write after preparation,
switch, rollback, switch again; and a switch the check refuses, which changes nothing."""
from __future__ import annotations

import random
import time

import pytest
from sqlalchemy import Engine, select, update

from cutover.orgchange.loader import load_changeset
from cutover.orgchange.resolve import Resolver
from cutover.orgchange.spec import UnitKind
from cutover.orgchange.switch import AlreadyActive, SwitchRefused, prepare, rollback, switch
from standby.domain.states import DeclarationState, SiteRole
from standby.store.engine import make_engine
from standby.store.migrate import upgrade
from standby.store.orgmap import active_map
from standby.store.schema import customs_offices, declarations, enterprises
from standby.store.seed import seed
from standby.store.site import init_site
from tests.conftest import REPO

CHANGESET, _ = load_changeset(REPO / "config" / "changesets" / "vn-2025-two-tier" / "changeset.yaml")
LEGACY = "1900-01-01"


@pytest.fixture(params=["sqlite", "postgres"])
def site(request, tmp_path, org, tariff, rules) -> Engine:
    """Site A with 300 enterprises and 120 closed declarations, 40 of them then reopened (pre-declared)."""
    url = (f"sqlite:///{tmp_path / 'site-a.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    upgrade(url)
    engine = make_engine(url)
    init_site(engine, "A", SiteRole.PRIMARY)
    seed(engine, org, enterprises_count=300, officers_per_section=1, declarations_count=120, tariff=tariff,
         rules=rules, rng_seed=random.Random(3).randint(0, 999))
    with engine.begin() as conn:
        bases = list(conn.execute(select(declarations.c.base).order_by(declarations.c.base).limit(40)).scalars())
        conn.execute(update(declarations).where(declarations.c.base.in_(bases)).values(
            state=DeclarationState.PRE_DECLARED.value, closed_at=None))
    yield engine
    engine.dispose()


def records(engine: Engine) -> dict:
    with engine.connect() as conn:
        return {"map": active_map(conn).active_version.isoformat(),
                "enterprises": [tuple(r) for r in conn.execute(select(enterprises).order_by(enterprises.c.tax_code))],
                "declarations": [tuple(r) for r in conn.execute(select(declarations).order_by(declarations.c.base))],
                "offices": [tuple(r) for r in conn.execute(select(customs_offices).order_by(customs_offices.c.code))]}


def test_switch_rollback_switch_on_both_backends(site) -> None:
    prepared = prepare(site, CHANGESET)
    assert prepared.prepared == {"enterprise": 300, "declaration": 40, "office": 63}
    with site.begin() as conn:  # written after preparation: the enterprise moves to another legacy ward
        tax_code = conn.execute(select(enterprises.c.tax_code).order_by(enterprises.c.tax_code).limit(1)).scalar()
        conn.execute(update(enterprises).where(enterprises.c.tax_code == tax_code).values(
            province_code="01", ward_code="00004"))
    before = records(site)
    first = switch(site, CHANGESET, Resolver(CHANGESET), now=time.time())
    assert first.delta["enterprise"] == 1 and first.moved == {"enterprise": 300, "declaration": 40, "office": 63}
    applied = records(site)
    assert applied["map"] == "2025-07-01"
    with site.connect() as conn:
        moved = conn.execute(select(enterprises).where(enterprises.c.tax_code == tax_code)).mappings().one()
        closed = conn.execute(select(declarations.c.declarant_map_version).where(
            declarations.c.state == DeclarationState.CLEARED.value)).scalars().all()
    assert (moved["ward_code"], moved["prev_ward_code"]) == (
        Resolver(CHANGESET).resolve(UnitKind.WARD, "00004").default_successor, "00004")
    assert len(closed) == 80 and {d.isoformat() for d in closed} == {LEGACY}
    with pytest.raises(AlreadyActive):
        switch(site, CHANGESET, Resolver(CHANGESET), now=time.time())
    rollback(site, CHANGESET, now=time.time())
    assert records(site) == before
    switch(site, CHANGESET, Resolver(CHANGESET), now=time.time())
    assert records(site) == applied


def test_a_record_the_change_set_cannot_resolve_refuses_the_switch_and_changes_nothing(site) -> None:
    prepare(site, CHANGESET)
    with site.begin() as conn:
        tax_code = conn.execute(select(enterprises.c.tax_code).order_by(enterprises.c.tax_code).limit(1)).scalar()
        conn.execute(update(enterprises).where(enterprises.c.tax_code == tax_code).values(ward_code="99999"))
    before = records(site)
    with pytest.raises(SwitchRefused) as refused:
        switch(site, CHANGESET, Resolver(CHANGESET), now=time.time())
    assert f"enterprise {tax_code}" in str(refused.value) and "99999" in str(refused.value)
    assert records(site) == before
