"""After the 2025 switch, reads accept old or new unit codes and say which map version they resolved them in: a served
site (real SQLite, Ray workers, uvicorn) with closed declarations on the legacy map and open ones pre-declared over
HTTP, switched by cutover.orgchange.switch directly on its database."""
from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from cutover.orgchange import Resolver, load_changeset
from cutover.orgchange.switch import prepare, switch
from standby.store.reference import LEGACY_FROM
from standby.store.schema import declarations, enterprises, org_successors, wards
from standby.store.seed import seed
from standbyctl.cli import main
from tests.conftest import REPO, make_site_db, serve_site
from tests.integration.http_helpers import OFFICE, get, payload, predeclare, refusal

SHIPPED = REPO / "config" / "changesets" / "vn-2025-two-tier" / "changeset.yaml"
YEN_BAI, OLD_LAO_CAI = "15", "10"  # legacy codes; both merged into new 15 (Lào Cai)


@dataclass
class World:
    site: object  # ServedSite
    client: httpx.Client
    closed_yen_bai: list[str]  # numbers of closed declarations declared in legacy Yên Bái
    closed_old_lao_cai: str  # a closed declaration declared in legacy Lào Cai (10)
    open_yen_bai: str  # pre-declared over HTTP in legacy Yên Bái, moved by the switch
    yen_bai_ward: str  # the legacy ward of all the Yên Bái records
    tax_code: str  # the open declaration's enterprise
    ops: str  # an operator token
    config: str  # the site's settings file


def _first_legacy_ward(conn, province: str) -> str:
    return conn.execute(select(wards.c.code).where(wards.c.province_code == province, wards.c.valid_from == LEGACY_FROM)
                        .order_by(wards.c.code).limit(1)).scalar_one()


def _place_in_yen_bai(engine, tax_codes: list[str]) -> tuple[str, list[str]]:
    """Move the enterprises to a Yên Bái ward, and closed declarations of the seed: three to that ward, the fourth
    to an old Lào Cai ward; return the ward and the four numbers."""
    with engine.begin() as conn:
        ward, ward_10 = _first_legacy_ward(conn, YEN_BAI), _first_legacy_ward(conn, OLD_LAO_CAI)
        conn.execute(update(enterprises).where(enterprises.c.tax_code.in_(tax_codes))
                     .values(province_code=YEN_BAI, ward_code=ward))
        numbers = list(conn.execute(select(declarations.c.number).order_by(declarations.c.base).limit(4)).scalars())
        conn.execute(update(declarations).where(declarations.c.number.in_(numbers[:3]))
                     .values(declarant_province_code=YEN_BAI, declarant_ward_code=ward))
        conn.execute(update(declarations).where(declarations.c.number == numbers[3])
                     .values(declarant_province_code=OLD_LAO_CAI, declarant_ward_code=ward_10))
    return ward, numbers


def _switch(engine) -> None:
    changeset, problems = load_changeset(SHIPPED)
    assert not problems
    prepare(engine, changeset)
    switch(engine, changeset, Resolver(changeset), now=time.time())


@pytest.fixture(scope="module")
def world(tmp_path_factory, org, tariff, rules, ray_session):
    tmp = tmp_path_factory.mktemp("org-reads")
    db = make_site_db(tmp, org, enterprises_count=300, officers_per_section=1)
    engine = db.engine()
    seed(engine, org, declarations_count=40, tariff=tariff, rules=rules)  # closed (cleared), legacy map
    tax_codes = db.active_enterprises(2)
    ward, numbers = _place_in_yen_bai(engine, tax_codes)  # before the site serves: its workers read enterprises once
    site = serve_site(db)
    client = httpx.Client(base_url=site.url, timeout=60)
    try:
        opened = predeclare(client, site.tokens.declarant(tax_codes[0]), payload(tariff, tax_codes[0]))
        _switch(engine)
        engine.dispose()
        yield World(site, client, numbers[:3], numbers[3], opened["number"], ward, tax_codes[0],
                    site.tokens.operator(), str(tmp / "settings-A.yaml"))
    finally:
        client.close()
        site.stop()


def _listing(w: World, token: str | None = None, **params) -> dict:
    resp = get(w.client, "/v1/declarations", token or w.ops, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _numbers(listing: dict) -> set[str]:
    return {item["number"] for item in listing["items"]}


def test_a_closed_declaration_keeps_its_legacy_codes_and_is_found_by_old_and_new_codes(world: World) -> None:
    number = world.closed_yen_bai[0]
    body = get(world.client, f"/v1/declarations/{number}", world.ops).json()
    assert body["state"] == "cleared"
    address = body["declarant_address"]
    assert (address["province_code"], address["province_name"], address["ward_code"], address["map_version"],
            address["map"]) == ("15", "Tỉnh Yên Bái", world.yen_bai_ward, "1900-01-01", "legacy")
    assert address["ward_name"]  # the legacy ward's name, from the legacy reference rows
    assert body["declarant_previous_address"] is None and body["goods"]

    old = _listing(world, province="15", map="legacy")
    assert old["unit"]["map"] == "legacy" and old["unit"]["name"] == "Tỉnh Yên Bái"
    assert old["unit"]["resolved_by"] == "named"
    assert set(world.closed_yen_bai) <= _numbers(old)

    new = _listing(world, province="15")
    assert set(world.closed_yen_bai) <= _numbers(new)
    by_ward_old = _listing(world, ward=world.yen_bai_ward, map="legacy")
    engine = world.site.db.engine(writer=False)
    with engine.connect() as conn:
        successor = conn.execute(select(org_successors.c.new_code).where(
            org_successors.c.kind == "ward", org_successors.c.old_code == world.yen_bai_ward,
            org_successors.c.is_default.is_(True))).scalar_one()
    engine.dispose()
    by_ward_new = _listing(world, ward=successor)
    assert by_ward_new["unit"]["map"] == "2025" and world.yen_bai_ward in by_ward_new["unit"]["predecessors"]["codes"]
    for listing in (by_ward_old, by_ward_new):
        assert set(world.closed_yen_bai) | {world.open_yen_bai} <= _numbers(listing)


def test_an_open_declaration_and_its_enterprise_show_the_new_address_and_the_previous_one(world: World) -> None:
    token = world.site.tokens.declarant(world.tax_code)
    body = get(world.client, f"/v1/declarations/{world.open_yen_bai}", token).json()
    assert body["state"] == "pre_declared"
    new, previous = body["declarant_address"], body["declarant_previous_address"]
    assert (new["province_code"], new["province_name"], new["map"]) == ("15", "Tỉnh Lào Cai", "2025")
    assert (previous["province_code"], previous["province_name"]) == ("15", "Tỉnh Yên Bái")
    assert previous["map"] == "legacy"
    assert previous["ward_code"] == world.yen_bai_ward and new["map_version"] == "2025-07-01"

    enterprise = get(world.client, f"/v1/enterprises/{world.tax_code}", token).json()
    assert enterprise["address"]["map"] == "2025" and enterprise["address"]["ward_code"] == new["ward_code"]
    assert enterprise["previous_address"]["map"] == "legacy"
    assert enterprise["previous_address"]["ward_code"] == world.yen_bai_ward
    assert enterprise["active_map"] == {"map_version": "2025-07-01", "map": "2025", "changeset": "vn-2025-two-tier"}
    other = world.site.db.active_enterprises(3)[-1]
    refusal(get(world.client, f"/v1/enterprises/{other}", token), 403, "forbidden")
    refusal(get(world.client, "/v1/enterprises/0000000000", world.ops), 404, "not_found", "tax_code")


def test_province_15_without_a_map_is_the_active_one_and_map_legacy_is_yen_bai(world: World) -> None:
    active = _listing(world, province="15")
    unit = active["unit"]
    assert (unit["map"], unit["name"], unit["resolved_by"]) == ("2025", "Tỉnh Lào Cai", "active_map")
    assert "active 2025 map" in unit["message"] and "map=legacy" in unit["message"]
    assert unit["predecessors"] == {"map_version": "1900-01-01", "map": "legacy", "codes": ["10", "15"]}
    assert {"codes": "current", "map_version": "1900-01-01", "map": "legacy",
            "unit_codes": ["10", "15"]} in active["searched"]
    assert {world.closed_old_lao_cai, world.open_yen_bai} <= _numbers(active)

    legacy = _listing(world, province="15", map="legacy")
    assert legacy["unit"]["successors"]["codes"] == ["15"]
    assert world.closed_old_lao_cai not in _numbers(legacy)  # old Lào Cai is not Yên Bái
    assert world.open_yen_bai in _numbers(legacy)  # found by the codes the switch moved it off
    assert all(item["declarant_address"]["province_code"] == "15" for item in legacy["items"])
    closed_only = _listing(world, province="15", map="legacy", state="cleared")
    assert set(world.closed_yen_bai) <= _numbers(closed_only) and world.open_yen_bai not in _numbers(closed_only)
    assert {item["state"] for item in closed_only["items"]} == {"cleared"}
    assert _listing(world, province="15", limit=1)["count"] == 1


def test_unknown_codes_and_maps_are_refused_with_a_code_and_a_sentence(world: World) -> None:
    error = refusal(get(world.client, "/v1/declarations", world.ops, params={"province": "99"}), 404, "unit_unknown",
                    "province")
    assert "99" in error["message"]
    error = refusal(get(world.client, "/v1/declarations", world.ops, params={"province": "02", "map": "2025"}), 404,
                    "unit_unknown")
    assert "02" in error["message"] and "2025" in error["message"]
    refusal(get(world.client, "/v1/declarations", world.ops, params={"province": "15", "map": "1999"}), 422,
            "map_unknown", "map")
    refusal(get(world.client, "/v1/declarations", world.ops), 422, "unit_required")
    refusal(get(world.client, "/v1/declarations", world.ops, params={"province": "15", "state": "lost"}), 422,
            "state_unknown", "state")


def test_a_declarant_cannot_list_by_province_and_an_officer_sees_only_its_office(world: World) -> None:
    declarant = world.site.tokens.declarant(world.tax_code)
    refusal(get(world.client, "/v1/declarations", declarant, params={"province": "15"}), 403, "forbidden")
    officer = world.site.db.officers_of(OFFICE, "01")[0]
    seen = _listing(world, world.site.tokens.officer(officer), province="15")
    assert world.open_yen_bai in _numbers(seen)  # pre-declared at OFFICE
    assert all(item["office_code"] == OFFICE for item in seen["items"])


def test_standbyctl_orgchange_unit_prints_both_versions_and_the_links(world: World) -> None:
    config = world.config
    result = CliRunner().invoke(main, ["--config", config, "orgchange", "unit", "--site", "A", "--kind", "province",
                                       "15"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("province 15 read in the active 2025 map: Tỉnh Lào Cai")
    assert "  also in map legacy (1900-01-01): 15 = Tỉnh Yên Bái" in lines
    assert "  predecessors in map legacy (change set vn-2025-two-tier): 10, 15" in lines
    legacy = CliRunner().invoke(main, ["--config", config, "orgchange", "unit", "--site", "A", "--kind", "province",
                                       "15", "--map", "legacy"])
    assert legacy.exit_code == 0 and "  successors in map 2025 (change set vn-2025-two-tier): 15" in legacy.stdout
    unknown = CliRunner().invoke(main, ["--config", config, "orgchange", "unit", "--site", "A", "--kind", "ward",
                                        "99999"])
    assert unknown.exit_code == 1 and "ward with code 99999" in unknown.stderr and "Traceback" not in unknown.output


@pytest.mark.postgres
def test_the_unit_search_on_postgres(pg_url: str, org, tariff, rules) -> None:
    """The same search on PostgreSQL (store and API functions, no HTTP): a declaration reopened before the switch is
    moved and found by the legacy code through its previous codes; closed ones by old and new codes."""
    from standby.api.org_reads import UnitNames, declarations_in_unit
    from standby.clearance.commands import Principal, Role
    from standby.domain.states import SiteRole
    from standby.store.engine import make_engine
    from standby.store.migrate import upgrade
    from standby.store.site import init_site

    upgrade(pg_url)
    engine = make_engine(pg_url)
    try:
        init_site(engine, "A", SiteRole.PRIMARY)
        seed(engine, org, enterprises_count=300, officers_per_section=1, declarations_count=20, tariff=tariff,
             rules=rules)
        with engine.connect() as conn:
            tax_codes = [conn.execute(select(enterprises.c.tax_code).limit(1)).scalar_one()]
        ward, numbers = _place_in_yen_bai(engine, tax_codes)
        with engine.begin() as conn:  # reopened: the switch moves it
            conn.execute(update(declarations).where(declarations.c.number == numbers[0]).values(state="pre_declared"))
        _switch(engine)
        ops, names = Principal(Role.OPERATOR, "ops"), UnitNames()

        def found(**query) -> dict:
            with engine.connect() as conn:
                answer = declarations_in_unit(conn, names, ops, **{"province": None, "ward": None, "map_name": None,
                                                                   "state": None, "limit": 50, **query})
            return {item["number"]: item for item in answer["items"]}

        legacy, active = found(province="15", map_name="legacy"), found(province="15")
        assert set(numbers[:3]) <= set(legacy) and numbers[3] not in legacy and set(numbers) <= set(active)
        moved = legacy[numbers[0]]
        assert moved["declarant_address"]["map"] == "2025" and moved["declarant_previous_address"]["ward_code"] == ward
        assert legacy[numbers[1]]["declarant_address"]["map"] == "legacy"
        assert set(numbers[:3]) <= set(found(ward=ward, map_name="legacy"))
    finally:
        engine.dispose()
