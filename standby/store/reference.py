"""Loads the org reference data (provinces, wards of both maps, customs branches and offices) into a site's database."""
from __future__ import annotations

from datetime import date

from sqlalchemy import Engine, func, insert, select

from standby.reference.orgdata import OrgData
from standby.store.schema import customs_branch_provinces, customs_branches, customs_offices, provinces, wards

# The 2025 two-tier map took effect on 1 July 2025; the legacy map is valid until then. The data does not say
# when each legacy unit began, so the legacy map's start is left open (the earliest date SQL can hold portably).
RESTRUCTURE_EFFECTIVE = date(2025, 7, 1)
LEGACY_FROM = date(1900, 1, 1)


def reference_loaded(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(select(func.count()).select_from(customs_offices)).scalar())


def load_reference(engine: Engine, org: OrgData) -> dict[str, int]:
    """Insert the reference tables in one transaction if they are empty; return the row counts loaded.
    Loading twice is a no-op (returns zeros) so `seed` can be rerun safely."""
    if reference_loaded(engine):
        return {}
    legacy = [{"code": p.code, "valid_from": LEGACY_FROM, "valid_to": RESTRUCTURE_EFFECTIVE, "name": p.name,
               "short_name": p.short_name} for p in org.provinces_legacy]
    current = [{"code": p.code, "valid_from": RESTRUCTURE_EFFECTIVE, "valid_to": None, "name": p.name,
                "short_name": p.short_name} for p in org.provinces_2025]
    ward_rows = [{"code": w.code, "valid_from": LEGACY_FROM, "valid_to": RESTRUCTURE_EFFECTIVE, "name": w.name,
                  "province_code": w.province_code} for w in org.wards_legacy]
    ward_rows += [{"code": w.code, "valid_from": RESTRUCTURE_EFFECTIVE, "valid_to": None, "name": w.name,
                   "province_code": w.province_code} for w in org.wards_2025]
    branches = [{"code": b.code, "name": b.name, "headquarters": b.headquarters or None, "status": b.status}
                for b in org.branches]
    coverage = [{"branch_code": b, "legacy_province_code": p, "status": s} for b, p, s in org.branch_provinces]
    offices = [{"code": o.code, "name": o.name, "branch_code": o.branch_code, "province_code": o.province_code,
                "province_map_version": LEGACY_FROM} for o in org.offices]
    with engine.begin() as conn:
        conn.execute(insert(provinces), legacy + current)
        conn.execute(insert(wards), ward_rows)
        conn.execute(insert(customs_branches), branches)
        conn.execute(insert(customs_branch_provinces), coverage)
        conn.execute(insert(customs_offices), offices)
    return {"provinces": len(legacy) + len(current), "wards": len(ward_rows), "customs_branches": len(branches),
            "customs_offices": len(offices)}
