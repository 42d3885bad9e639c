"""Fills a site's database with reference data and a realistic synthetic population.

Enterprises get addresses on the pre-July-2025 map, so a restructure has real work to do. Where they sit is an
assumption (the public data has no register of importers): Hồ Chí Minh City and Hà Nội carry most foreign trade, so
they get 30% and 20%; the rest spread over every other legacy ward evenly.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

from sqlalchemy import Engine, func, insert, select

from standby.clearance.numbers import NumberAllocator
from standby.domain.risk import RiskRules
from standby.domain.states import DeclarationState, Kind
from standby.domain.tariff import Tariff, assess, validate_lines
from standby.reference.orgdata import OrgData
from standby.store.reference import LEGACY_FROM, load_reference
from standby.store.schema import declarations, enterprises, goods_lines, officer_rotation, officers
from standby.clearance.handlers import assessment_totals, declarant_address, goods_line_rows
from standby.synthetic import EnterpriseProfile, make_declaration_payload, make_enterprise, risk_facts_for

PROVINCE_WEIGHTS = {"79": 0.30, "01": 0.20}  # HCM City, Hà Nội; the rest share what is left
CHUNK = 20_000
TEMPLATES = 2_000  # distinct assessed declarations the historical ones are drawn from
_STREETS = ("Lê Lợi", "Trần Hưng Đạo", "Nguyễn Huệ", "Hai Bà Trưng", "Lý Thường Kiệt", "Quang Trung",
            "Nguyễn Trãi", "Phan Chu Trinh", "Điện Biên Phủ", "Võ Văn Kiệt")
_GIVEN = ("An", "Bình", "Châu", "Dũng", "Giang", "Hà", "Hải", "Hạnh", "Hùng", "Lan", "Linh", "Minh", "Nam",
          "Ngọc", "Phong", "Quân", "Sơn", "Thảo", "Trang", "Tuấn")
_FAMILY = ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi", "Đỗ", "Hồ")

Progress = Callable[[str, int, int], None]


@dataclass
class SeedReport:
    reference: dict[str, int] = field(default_factory=dict)
    enterprises: int = 0
    officers: int = 0
    declarations: int = 0


def seed(engine: Engine, org: OrgData, *, enterprises_count: int = 106_000, officers_per_section: int = 6,
         declarations_count: int = 0, tariff: Tariff | None = None, rules: RiskRules | None = None,
         site_digit: int = 1, rng_seed: int = 2025, open_share: float = 0.0,
         progress: Progress = lambda stage, done, total: None) -> SeedReport:
    """Seed what is missing; rerunning adds nothing already there (enterprises and officers are seeded once).
    `declarations_count` historical declarations are added each time: cleared ones, except a share `open_share`
    (0..1) left open (pre-declared, not yet registered), as a live store holds."""
    report = SeedReport(reference=load_reference(engine, org))
    rng = random.Random(rng_seed)
    if _count(engine, enterprises) == 0:
        report.enterprises = _seed_enterprises(engine, org, enterprises_count, rng, progress)
    if _count(engine, officers) == 0:
        report.officers = _seed_officers(engine, org, officers_per_section, rng)
    if not 0.0 <= open_share <= 1.0:
        raise ValueError(f"open_share is a share between 0 and 1, got {open_share}")
    if declarations_count:
        if tariff is None or rules is None:
            raise ValueError("historical declarations need the tariff and the risk rules")
        report.declarations = _seed_declarations(engine, org, declarations_count, tariff, rules, site_digit, rng,
                                                 progress, open_share)
    return report


def _count(engine: Engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def _address_picker(org: OrgData, rng: random.Random) -> Callable[[], tuple[str, str]]:
    by_province: dict[str, list[str]] = {}
    for ward in org.wards_legacy:
        by_province.setdefault(ward.province_code, []).append(ward.code)
    rest = [(p, w) for p, codes in by_province.items() if p not in PROVINCE_WEIGHTS for w in codes]
    rest_share = 1 - sum(PROVINCE_WEIGHTS.values())

    def pick() -> tuple[str, str]:
        roll = rng.random()
        for province, share in PROVINCE_WEIGHTS.items():
            if roll < share:
                return province, rng.choice(by_province[province])
            roll -= share
        assert roll < rest_share + 1e-9
        return rng.choice(rest)
    return pick


def _seed_enterprises(engine: Engine, org: OrgData, count: int, rng: random.Random, progress: Progress) -> int:
    pick = _address_picker(org, rng)
    done = 0
    while done < count:
        rows = []
        for index in range(done, min(done + CHUNK, count)):
            province, ward = pick()
            p = make_enterprise(rng, index, province)
            rows.append({"tax_code": p.tax_code, "name": p.name, "province_code": province, "ward_code": ward,
                         "address_valid_from": LEGACY_FROM,
                         "street": f"Số {rng.randint(1, 399)} {rng.choice(_STREETS)}", "status": p.status,
                         "tax_debt_days": p.tax_debt_days, "risk_class": p.risk_class, "age_days": p.age_days})
        with engine.begin() as conn:
            conn.execute(insert(enterprises), rows)
        done += len(rows)
        progress("enterprises", done, count)
    return done


def _seed_officers(engine: Engine, org: OrgData, per_section: int, rng: random.Random) -> int:
    rows, rotation = [], []
    for office in org.offices:
        for section in ("01", "02"):
            for position in range(per_section):
                rows.append({"officer_id": f"{office.code}-{section}-{position + 1:02d}",
                             "name": f"{rng.choice(_FAMILY)} {rng.choice(_GIVEN)}", "office_code": office.code,
                             "section": section, "position": position, "active": True})
            rotation.append({"office_code": office.code, "section": section, "next_position": 0})
    with engine.begin() as conn:
        conn.execute(insert(officers), rows)
        conn.execute(insert(officer_rotation), rotation)
    return len(rows)


def _seed_declarations(engine: Engine, org: OrgData, count: int, tariff: Tariff, rules: RiskRules, digit: int,
                       rng: random.Random, progress: Progress, open_share: float) -> int:
    """Historical declarations written straight to the tables for benchmarks, CHUNK goods lines' worth per
    multi-row insert and one transaction per chunk. Assessing and deciding each one is what made a million slow
    (~1 ms each), so the goods, assessment and lane come from a pool of TEMPLATES assessed declarations and each
    declaration gets its own number, enterprise, office, times and state."""
    with engine.connect() as conn:
        population = [dict(r) for r in conn.execute(select(
            enterprises.c.tax_code, enterprises.c.name, enterprises.c.risk_class, enterprises.c.status,
            enterprises.c.tax_debt_days, enterprises.c.age_days, enterprises.c.province_code, enterprises.c.ward_code,
            enterprises.c.address_valid_from).where(enterprises.c.status == "active")).mappings()]
    offices = [o.code for o in org.offices]
    numbers = NumberAllocator(digit, count)
    with engine.begin() as conn:
        numbers.reserve(conn, count)
    pool = [_template(rng, population, offices, tariff, rules, numbers) for _ in range(min(TEMPLATES, count))]
    done = len(pool)
    with _bulk_load(engine) as conn:
        write = {t: _row_writer(conn, t) for t in (declarations, goods_lines)}
        _insert(conn, write, [_historical(rng, population, offices, t, t["number"], rng.random() < open_share)
                              for t in pool])
        while done < count:
            rows = [_historical(rng, population, offices, rng.choice(pool), numbers.next(),
                                rng.random() < open_share) for _ in range(min(CHUNK // 4, count - done))]
            _insert(conn, write, rows)
            done += len(rows)
            progress("declarations", done, count)
    return done


def _insert(conn, write: dict, rows: list[tuple[dict, list[dict]]]) -> None:
    """One chunk in one transaction."""
    with conn.begin():
        write[declarations]([decl for decl, _ in rows])
        write[goods_lines]([line for _, lines in rows for line in lines])


@contextmanager
def _bulk_load(engine: Engine):
    """A connection for a bulk load. On SQLite, for this load only: no fsync at each commit (a crash mid-seed
    leaves a benchmark database to seed again, nothing else) and a 256 MB page cache for the indexes."""
    with engine.connect() as conn:
        if engine.dialect.name != "sqlite":
            yield conn
            return
        raw = conn.connection.driver_connection  # PRAGMAs outside the transaction the engine begins per statement
        before = [raw.execute(f"PRAGMA {p}").fetchone()[0] for p in ("synchronous", "cache_size")]
        raw.execute("PRAGMA synchronous=OFF")
        raw.execute("PRAGMA cache_size=-262144")
        try:
            yield conn
        finally:
            conn.rollback()
            raw.execute(f"PRAGMA synchronous={int(before[0])}")
            raw.execute(f"PRAGMA cache_size={int(before[1])}")


def _row_writer(conn, table) -> Callable[[list[dict]], None]:
    """A multi-row insert into `table` straight through the driver: the statement compiled once and each row's
    values put through the columns' bind processors here (SQLAlchemy's per-row parameter handling cost as much
    as the insert itself). Positional (SQLite) or named (psycopg) parameters, as the dialect compiles them."""
    compiled = insert(table).compile(dialect=conn.dialect)
    names = list(compiled.positiontup or compiled.params)
    procs = [(n, table.c[n].type.bind_processor(conn.dialect)) for n in names]
    sql = str(compiled)

    def values(row: dict) -> list:
        return [p(row.get(n)) if p else row.get(n) for n, p in procs]

    def write(rows: list[dict]) -> None:
        if compiled.positiontup:
            conn.exec_driver_sql(sql, [tuple(values(r)) for r in rows])
        else:
            conn.exec_driver_sql(sql, [dict(zip(names, values(r))) for r in rows])
    return write


def _template(rng, population, offices, tariff, rules, numbers: NumberAllocator) -> dict:
    """One declaration assessed and decided in full (the first declaration that uses it takes its number)."""
    enterprise, number = rng.choice(population), numbers.next()
    kind = Kind.IMPORT if rng.random() < 0.55 else Kind.EXPORT
    payload = make_declaration_payload(rng, kind, enterprise["tax_code"], rng.choice(offices), tariff)
    lines = validate_lines(payload["goods"], tariff)
    assessment = assess(lines, kind, tariff)
    decision = rules.decide(risk_facts_for(_profile(enterprise), payload, assessment, number.base))
    return {"number": number, "kind": kind, "lines": lines, "assessment": assessment, "decision": decision}


def _historical(rng, population, offices, template: dict, number, still_open: bool) -> tuple[dict, list[dict]]:
    """A cleared declaration (decided, paid, closed an hour later), or an open one (pre-declared: no lane, nothing
    paid, not closed), from `template`'s goods with its own number, enterprise, office and time."""
    enterprise, kind, decision = rng.choice(population), template["kind"], template["decision"]
    assessment = template["assessment"]
    at = 1_719_792_000.0 - rng.random() * 365 * 86_400  # within the year before 1 July 2024
    decl = {"base": number.base, "number": str(number), "amendment": 0, "kind": kind.value, "section": kind.section,
            "enterprise_tax_code": enterprise["tax_code"], "office_code": rng.choice(offices),
            "state": DeclarationState.CLEARED.value, "lane": decision.lane.value, "lane_rule": decision.rule_id,
            "lane_reason": decision.reason, "officer_id": None, **assessment_totals(assessment),
            "paid_vnd": assessment.total_vnd,
            "site_id": "seed", "epoch": 0, "created_at": at, "registered_at": at, "decided_at": at,
            "closed_at": at + 3600, "updated_at": at + 3600, **declarant_address(enterprise)}
    if still_open:
        decl.update(state=DeclarationState.PRE_DECLARED.value, lane=None, lane_rule=None, lane_reason=None,
                    paid_vnd=0, registered_at=None, decided_at=None, closed_at=None, updated_at=at)
    return decl, goods_line_rows(number.base, template["lines"], assessment)


def _profile(enterprise: dict) -> EnterpriseProfile:
    return EnterpriseProfile(**{f.name: enterprise[f.name] for f in fields(EnterpriseProfile)})
