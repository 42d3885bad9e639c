"""Reads that name administrative units: an enterprise's address, declarations by province or ward, and the
declarant's address on a declaration, each saying which map version its codes belong to (issue 10); and the
declaration read itself, which shows that address.

Contract: every function here only reads. A unit named in a query is resolved by :mod:`standby.store.units` (old or
new code; the active map unless `map=` names one) and the answer names the unit, the map version it was resolved in
and the codes searched per version. Refusals are ApiError: 404 `unit_unknown`, 422 `map_unknown`, 422
`unit_required`, 422 `state_unknown`, 404 `not_found`, 403 `forbidden`.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import date

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import Connection, Engine, select

from standby.api.contract import STATE_ENUM, TaxCode, answers
from standby.api.errors import ApiError
from standby.clearance.commands import Principal, Role
from standby.clearance.handlers import declaration_view
from standby.domain.errors import DomainError
from standby.domain.numbers import DeclarationNumber
from standby.domain.states import DeclarationState
from standby.store import reads
from standby.store.orgmap import active_map
from standby.store.schema import declarations, enterprises
from standby.store.units import (Columns, UnknownMap, UnknownUnit, linked_codes, map_label, map_versions, parse_map,
                                 resolve_unit, unit_filter, unit_name)

MAX_LIMIT = 500
_DECLARANT_COLUMNS = {
    "province": Columns(declarations.c.declarant_province_code, declarations.c.declarant_map_version,
                        declarations.c.declarant_prev_province_code, declarations.c.declarant_prev_map_version),
    "ward": Columns(declarations.c.declarant_ward_code, declarations.c.declarant_map_version,
                    declarations.c.declarant_prev_ward_code, declarations.c.declarant_prev_map_version),
}


class UnitNames:
    """Unit names by (kind, code, map version), read once each: the reference rows of a map version never change,
    and the declaration read is on the load tests' hot path."""

    def __init__(self) -> None:
        self._names: dict[tuple, str | None] = {}
        self._lock = threading.Lock()

    def name(self, conn: Connection, kind: str, code: str | None, version: date | None) -> str | None:
        key = (kind, code, version)
        if key not in self._names:
            found = unit_name(conn, kind, code, version)
            with self._lock:
                self._names[key] = found
        return self._names[key]


def address_view(conn: Connection, names: UnitNames, province: str | None, ward: str | None,
                 version: date | None) -> dict | None:
    """An address's codes and names with its map version, or None when it has no codes."""
    if province is None or version is None:
        return None
    version = date.fromisoformat(version) if isinstance(version, str) else version
    return {"province_code": province, "province_name": names.name(conn, "province", province, version),
            "ward_code": ward, "ward_name": names.name(conn, "ward", ward, version),
            "map_version": version.isoformat(), "map": map_label(version)}


def declarant_addresses(conn: Connection, names: UnitNames, row: dict) -> dict:
    """The declaration read's address members: the declarant's address as it stands (a closed declaration keeps the
    one it was declared with) and, when a change set moved it, the one before."""
    return {"declarant_address": address_view(conn, names, row["declarant_province_code"],
                                              row["declarant_ward_code"], row["declarant_map_version"]),
            "declarant_previous_address": address_view(conn, names, row["declarant_prev_province_code"],
                                                       row["declarant_prev_ward_code"],
                                                       row["declarant_prev_map_version"]),
            "declarant_review": row["declarant_review"]}


def enterprise_body(conn: Connection, names: UnitNames, tax_code: str, principal: Principal, site_id: str) -> dict:
    """GET /v1/enterprises/{tax_code}: the enterprise with its address on its map version, the previous address
    when a change set moved it, the review flag, and (when the address is not on the active map) its successors."""
    if principal.role is Role.DECLARANT and principal.subject != tax_code:
        raise ApiError(403, "forbidden", "this declarant token acts for another enterprise")
    row = conn.execute(select(enterprises).where(enterprises.c.tax_code == tax_code)).mappings().first()
    if row is None:
        raise ApiError(404, "not_found", f"no enterprise with tax code {tax_code} at site {site_id}", "tax_code")
    state = active_map(conn)
    address = address_view(conn, names, row["province_code"], row["ward_code"], row["address_valid_from"])
    address["street"] = row["street"]
    if address["map_version"] != state.active_version.isoformat() and state.changeset_id:
        address["successors"] = {kind: list(linked_codes(conn, state.changeset_id, kind, code, forward=True))
                                 for kind, code in (("province", row["province_code"]), ("ward", row["ward_code"]))}
    return {"tax_code": row["tax_code"], "name": row["name"], "status": row["status"], "address": address,
            "previous_address": address_view(conn, names, row["prev_province_code"], row["prev_ward_code"],
                                             row["prev_address_valid_from"]),
            "address_review": row["address_review"],
            "active_map": {"map_version": state.active_version.isoformat(), "map": map_label(state.active_version),
                           "changeset": state.changeset_id}}


def declarations_in_unit(conn: Connection, names: UnitNames, principal: Principal, *, province: str | None,
                         ward: str | None, map_name: str | None, state: str | None, limit: int) -> dict:
    """GET /v1/declarations?province=|ward=: declarations whose declarant address is in the unit under either map,
    newest first. An officer sees only its own office's declarations (as on GET /v1/declarations/{number})."""
    if (province is None) == (ward is None):
        raise ApiError(422, "unit_required", "name exactly one unit: ?province=CODE or ?ward=CODE")
    kind, code = ("province", province) if province is not None else ("ward", ward)
    if state is not None and state not in {s.value for s in DeclarationState}:
        raise ApiError(422, "state_unknown", f"state {state!r} is not one of "
                                             f"{', '.join(s.value for s in DeclarationState)}", "state")
    try:
        version = parse_map(map_name, map_versions(conn)) if map_name is not None else None
        resolution = resolve_unit(conn, kind, code, version)
    except UnknownMap as exc:
        raise ApiError(422, "map_unknown", str(exc), "map") from None
    except UnknownUnit as exc:
        raise ApiError(404, "unit_unknown", str(exc), kind) from None
    query = select(declarations).where(unit_filter(resolution.search, _DECLARANT_COLUMNS[kind]))
    if state is not None:
        query = query.where(declarations.c.state == state)
    if principal.role is Role.OFFICER:
        query = query.where(declarations.c.office_code == reads.office_of_officer(conn, principal.subject))
    rows = conn.execute(query.order_by(declarations.c.created_at.desc(), declarations.c.base.desc())
                        .limit(max(1, min(limit, MAX_LIMIT)))).mappings()
    items = [{**declaration_view(r), **declarant_addresses(conn, names, r)} for r in rows]
    return {"unit": resolution.as_dict(), "searched": resolution.search.as_list(), "count": len(items),
            "items": items}


def declaration_body(engine: Engine, site_id: str, number: str, principal: Principal, names: UnitNames) -> dict:
    """GET /v1/declarations/{number}: the declaration with its goods lines and the declarant's addresses. A declarant
    reads only its own enterprise's, an officer only its own office's."""
    try:
        parsed = DeclarationNumber.parse(number)
    except DomainError as err:
        raise ApiError(400, err.refusal.code, err.refusal.message, "number") from None
    with engine.connect() as conn:
        row = reads.declaration(conn, parsed.base)
        if row is None:
            raise ApiError(404, "not_found", f"no declaration {number} at site {site_id}", "number")
        if principal.role is Role.DECLARANT and row["enterprise_tax_code"] != principal.subject:
            raise ApiError(403, "forbidden", "this declarant token acts for another enterprise")
        if principal.role is Role.OFFICER:
            office = reads.office_of_officer(conn, principal.subject)
            if office != row["office_code"]:
                raise ApiError(403, "forbidden", f"officer {principal.subject} does not belong to office "
                                                 f"{row['office_code']}")
        lines = reads.goods(conn, parsed.base)
        addresses = declarant_addresses(conn, names, row)  # the read's body only: declaration_view is also replayed
    body = {**declaration_view(row), **addresses}
    body["goods"] = [{k: (str(v) if k in ("quantity", "unit_price") else v) for k, v in line.items()
                      if k != "declaration_base"} for line in lines]
    return body


def add_org_routes(app: FastAPI, engine: Engine, site_id: str, names: UnitNames,
                   anyone: Callable, officer_or_operator: Callable) -> None:
    """Wire the org reads onto `app`; `anyone`/`officer_or_operator` are the app's auth dependencies."""
    from fastapi import Depends, Query

    @app.get("/v1/enterprises/{tax_code}", tags=["reads"], responses=answers("get_enterprise"),
             summary="An enterprise with its address, the map version of its codes, and the previous address")
    def get_enterprise(tax_code: TaxCode, principal: Principal = Depends(anyone)):
        """Any role, as the declaration read: a declarant only its own enterprise; an officer any (enterprises
        belong to no office, and an officer checking a declaration needs its declarant's address)."""
        with engine.connect() as conn:
            return JSONResponse(enterprise_body(conn, names, tax_code, principal, site_id))

    @app.get("/v1/declarations", tags=["reads"], responses=answers("list_by_unit"),
             summary="Declarations whose declarant is in a province or ward (old or new code), newest first")
    def list_by_unit(principal: Principal = Depends(officer_or_operator),
                     province: str | None = Query(None, description="a province code; exactly one of province, ward"),
                     ward: str | None = Query(None, description="a ward code; exactly one of province, ward"),
                     map: str | None = Query(None, description="legacy, 2025 or a date"),
                     state: str | None = Query(None, json_schema_extra=STATE_ENUM),
                     limit: int = Query(50, description=f"at most this many; taken as 1-{MAX_LIMIT}")):
        """Officers and operators only: a listing spans enterprises, so a declarant (who may read only its own
        enterprise's declarations) has no use of it, and an officer's answer is limited to its own office."""
        with engine.connect() as conn:
            return JSONResponse(declarations_in_unit(conn, names, principal, province=province, ward=ward,
                                                     map_name=map, state=state, limit=limit))
