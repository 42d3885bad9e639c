"""Schema, site control and seed on a real PostgreSQL (fresh database per test)."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, inspect, select

from standby.domain.states import IntakeState, SiteRole
from standby.reference.orgdata import OrgData
from standby.store.engine import make_engine
from standby.store.migrate import current_revision, head_revision, upgrade
from standby.store.schema import (
    customs_offices,
    declarations,
    enterprises,
    metadata,
    officer_rotation,
    officers,
    site_control,
    wards,
)
from standby.store.seed import seed
from standby.store.site import init_site
from tests.integration.postgres_support import (  # noqa: F401  (fixtures included)
    ENTERPRISES,
    OFFICERS_PER_SECTION,
    SITE,
    count,
    engine,
    org,
    pipeline,
    rows,
    site,
)

pytestmark = pytest.mark.postgres

# --- schema -----------------------------------------------------------------------------------------------------


def test_upgrade_creates_the_schema_at_head_and_twice_is_a_no_op(pg_url: str) -> None:
    upgrade(pg_url)
    eng = make_engine(pg_url)
    try:
        assert eng.dialect.name == "postgresql"
        assert current_revision(eng) == head_revision()
        tables = set(inspect(eng).get_table_names())
        assert tables == set(metadata.tables) | {"alembic_version"}
        with eng.connect() as conn:
            # The migrated schema is exactly schema.py: columns, types, indexes, constraints.
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata) == []
            checks = {c["name"] for c in inspect(conn).get_check_constraints("declarations")}
            assert {"ck_declarations_kind", "ck_declarations_amendment", "ck_declarations_money"} <= checks
        before = _schema_snapshot(eng)
        init_site(eng, SITE, SiteRole.PRIMARY)

        upgrade(pg_url)  # again: nothing to do, nothing touched

        assert current_revision(eng) == head_revision()
        assert _schema_snapshot(eng) == before
        assert rows(eng, select(site_control.c.site_id, site_control.c.role)) == [{"site_id": "A", "role": "primary"}]
        with eng.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
    finally:
        eng.dispose()


def _schema_snapshot(eng: Engine) -> dict:
    insp = inspect(eng)
    return {t: ([(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)],
                sorted(i["name"] for i in insp.get_indexes(t)))
            for t in sorted(insp.get_table_names())}


# --- site control and seed ----------------------------------------------------------------------------------------


def test_init_site_and_seed(engine: Engine, org: OrgData) -> None:
    control = init_site(engine, SITE, SiteRole.PRIMARY, now=1000.0)
    assert (control.role, control.epoch, control.intake_state, control.primary_site) == (
        SiteRole.PRIMARY, 1, IntakeState.OPEN, SITE)
    assert init_site(engine, SITE, SiteRole.STANDBY) == control  # an existing row is left as it is

    report = seed(engine, org, enterprises_count=ENTERPRISES, officers_per_section=OFFICERS_PER_SECTION)

    sections = 2
    assert report.enterprises == count(engine, enterprises) == ENTERPRISES
    assert report.officers == count(engine, officers) == len(org.offices) * sections * OFFICERS_PER_SECTION
    assert count(engine, officer_rotation) == len(org.offices) * sections
    assert count(engine, officer_rotation, officer_rotation.c.next_position != 0) == 0
    assert count(engine, customs_offices) == report.reference["customs_offices"] == len(org.offices)
    assert count(engine, wards) == len(org.wards_legacy) + len(org.wards_2025)
    # Every enterprise's address is a real ward on the legacy map (the join works on PostgreSQL's types).
    with engine.connect() as conn:
        orphans = conn.execute(select(func.count()).select_from(enterprises).outerjoin(
            wards, (wards.c.code == enterprises.c.ward_code) & (wards.c.valid_from == enterprises.c.address_valid_from)
        ).where(wards.c.code.is_(None))).scalar()
        statuses = dict(conn.execute(select(enterprises.c.status, func.count()).group_by(enterprises.c.status)).all())
        name = conn.execute(select(enterprises.c.name).order_by(enterprises.c.tax_code).limit(1)).scalar()
    assert orphans == 0
    assert statuses["active"] > ENTERPRISES * 0.95
    assert name.startswith("Công ty")  # UTF-8 round trip
    # Officer ids and rotation positions are what the pipeline's reference cache orders by.
    first_office = org.offices[0].code
    assert [r["officer_id"] for r in rows(engine, select(officers.c.officer_id).where(
        officers.c.office_code == first_office, officers.c.section == "01").order_by(officers.c.position))] == [
        f"{first_office}-01-01", f"{first_office}-01-02", f"{first_office}-01-03"]

    again = seed(engine, org, enterprises_count=ENTERPRISES, officers_per_section=OFFICERS_PER_SECTION)
    assert (again.reference, again.enterprises, again.officers) == ({}, 0, 0)
    assert count(engine, enterprises) == ENTERPRISES
