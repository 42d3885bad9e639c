"""One handler per operation. Each decides with pure domain code and records its writes in the batch;
it raises DomainError to refuse, in which case it has written nothing."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from standby.clearance.batch import BatchWrites
from standby.clearance.commands import Command, Op, Outcome, Principal, Role
from standby.domain.enterprise import registration_block
from standby.domain.errors import DomainError
from standby.domain.numbers import DeclarationNumber
from standby.domain.risk import RiskFacts, RiskRules
from standby.domain.rotation import pick_officer
from standby.domain.states import (
    LANE_EVENT,
    DeclarationEvent,
    DeclarationState,
    Kind,
    Lane,
    next_declaration_state,
)
from standby.domain.tariff import Tariff, assess, validate_lines


@dataclass
class HandlerContext:
    conn: Connection
    writes: BatchWrites
    tariff: Tariff
    rules: RiskRules
    offices: frozenset[str]
    officers: Callable[[str, str], list[str]]  # (office, section) -> active officer ids in rotation order
    next_number: Callable[[], DeclarationNumber]
    site_id: str
    epoch: int
    now: float


def declaration_view(row: dict) -> dict:
    """The JSON body a client sees for a declaration."""
    keys = ("number", "base", "amendment", "kind", "section", "enterprise_tax_code", "office_code", "state", "lane",
            "lane_rule", "lane_reason", "officer_id", "line_count", "customs_value_vnd", "duty_vnd", "vat_vnd",
            "total_vnd", "paid_vnd", "site_id", "epoch")
    return {k: row[k] for k in keys}


def _audit(ctx: HandlerContext, cmd: Command, action: str, target: str, detail: dict | None = None) -> None:
    ctx.writes.audit.append({
        "at": ctx.now, "site_id": ctx.site_id, "epoch": ctx.epoch, "actor": cmd.principal.key[:64],
        "action": action, "target": target, "detail": json.dumps(detail, default=str) if detail else None,
    })


def _current(ctx: HandlerContext, cmd: Command) -> dict:
    """The declaration a by-number command names, after checking the caller may touch it and the number is current."""
    number = DeclarationNumber.parse(cmd.payload.get("number", ""))
    row = ctx.writes.declarations.get(number.base)
    if row is None:
        raise DomainError("not_found", f"no declaration {number} at this site", "number", 404)
    _authorize(cmd.principal, row)
    if row["number"] != str(number):
        raise DomainError("number_superseded",
                          f"declaration {number} was amended; its current number is {row['number']}", "number", 409)
    return row


def _authorize(principal: Principal, row: dict) -> None:
    if principal.role is Role.DECLARANT and principal.subject != row["enterprise_tax_code"]:
        raise DomainError("forbidden", "this declarant token acts for another enterprise", None, 403)


def _transition(row: dict, event: DeclarationEvent) -> None:
    row["state"] = next_declaration_state(DeclarationState(row["state"]), event).value


def goods_line_rows(base: str, lines, assessment) -> list[dict]:
    """Table rows for validated goods lines and their assessment (shared with the seed's historical records)."""
    return [{"declaration_base": base, "line_no": no, "hs_code": g.hs_code, "description": g.description,
             "quantity": g.quantity, "unit": g.unit, "unit_price": g.unit_price, "currency": g.currency,
             "origin": g.origin, "value_vnd": t.customs_value_vnd, "duty_vnd": t.duty_vnd, "vat_vnd": t.vat_vnd}
            for no, (g, t) in enumerate(zip(lines, assessment.lines, strict=True), start=1)]


def declarant_address(enterprise: dict) -> dict:
    """The declarant's address as declared: the enterprise's codes with their map version, kept on the declaration
    (a legal record) whatever later becomes of the enterprise's address."""
    return {"declarant_province_code": enterprise["province_code"], "declarant_ward_code": enterprise["ward_code"],
            "declarant_map_version": enterprise["address_valid_from"]}


def assessment_totals(assessment) -> dict:
    return {"line_count": len(assessment.lines), "customs_value_vnd": assessment.customs_value_vnd,
            "duty_vnd": assessment.duty_vnd, "vat_vnd": assessment.vat_vnd, "total_vnd": assessment.total_vnd}


def _assessed_lines(ctx: HandlerContext, kind: Kind, raw_goods, base: str = "") -> tuple[list[dict], dict]:
    lines = validate_lines(raw_goods, ctx.tariff)
    assessment = assess(lines, kind, ctx.tariff)
    return goods_line_rows(base, lines, assessment), assessment_totals(assessment)


def pre_declare(ctx: HandlerContext, cmd: Command) -> Outcome:
    p = cmd.payload
    kind = Kind(p["kind"])
    tax_code, office = p["enterprise_tax_code"], p["office_code"]
    if cmd.principal.role is Role.DECLARANT and cmd.principal.subject != tax_code:
        raise DomainError("forbidden", "this declarant token acts for another enterprise", "enterprise_tax_code", 403)
    if tax_code not in ctx.writes.enterprises:
        raise DomainError("enterprise_unknown", f"no enterprise with tax code {tax_code}", "enterprise_tax_code")
    if office not in ctx.offices:
        raise DomainError("office_unknown", f"no customs office with code {office}", "office_code")
    enterprise = ctx.writes.enterprises[tax_code]
    lines, totals = _assessed_lines(ctx, kind, p["goods"])
    number = ctx.next_number()
    for line in lines:
        line["declaration_base"] = number.base
    row = {
        "base": number.base, "number": str(number), "amendment": 0, "kind": kind.value, "section": kind.section,
        "enterprise_tax_code": tax_code, "office_code": office, "state": DeclarationState.PRE_DECLARED.value,
        "lane": None, "lane_rule": None, "lane_reason": None, "officer_id": None, **totals, "paid_vnd": 0,
        "site_id": ctx.site_id, "epoch": ctx.epoch, "created_at": ctx.now, "registered_at": None,
        "decided_at": None, "closed_at": None, "updated_at": ctx.now, **declarant_address(enterprise),
    }
    ctx.writes.declarations[number.base] = row
    ctx.writes.new_bases.append(number.base)
    ctx.writes.replaced_lines[number.base] = lines
    ctx.writes.line_facts[number.base] = [(line["hs_code"], line["origin"]) for line in lines]
    _audit(ctx, cmd, kind.predeclare_message, str(number))
    return Outcome(201, declaration_view(row))


def register(ctx: HandlerContext, cmd: Command) -> Outcome:
    row = _current(ctx, cmd)
    if row["state"] != DeclarationState.PRE_DECLARED.value:
        raise DomainError("already_registered", f"declaration {row['number']} is {row['state']}, not pre_declared",
                          "number", 409)
    enterprise = ctx.writes.enterprises[row["enterprise_tax_code"]]
    reason = registration_block(enterprise["tax_code"], enterprise["status"], enterprise["tax_debt_days"])
    if reason:
        raise DomainError("enterprise_blocked", reason, "enterprise_tax_code", 422)
    facts = RiskFacts(
        kind=Kind(row["kind"]), enterprise_risk_class=enterprise["risk_class"],
        enterprise_age_days=enterprise["age_days"], office_code=row["office_code"],
        hs_chapters=frozenset(hs[:2] for hs, _ in ctx.writes.line_facts.get(row["base"], [])),
        hs_headings=frozenset(hs[:4] for hs, _ in ctx.writes.line_facts.get(row["base"], [])),
        origins=frozenset(o for _, o in ctx.writes.line_facts.get(row["base"], [])),
        customs_value_vnd=row["customs_value_vnd"], line_count=row["line_count"], declaration_base=row["base"],
    )
    decision = ctx.rules.decide(facts)
    state = next_declaration_state(DeclarationState(row["state"]), LANE_EVENT[decision.lane])
    officer = None if decision.lane is Lane.GREEN else _take_turn(ctx, row)
    row.update(state=state.value, lane=decision.lane.value, lane_rule=decision.rule_id, lane_reason=decision.reason,
               registered_at=ctx.now, decided_at=ctx.now, updated_at=ctx.now, epoch=ctx.epoch)
    if officer is None:
        _settle_if_paid(ctx, row)
    else:
        _assign(ctx, row, officer, decision.lane)
    ctx.writes.changed_bases.add(row["base"])
    _audit(ctx, cmd, Kind(row["kind"]).register_message, row["number"], {"lane": row["lane"], "rule": row["lane_rule"]})
    return Outcome(200, declaration_view(row), lane=row["lane"])


def _take_turn(ctx: HandlerContext, row: dict) -> str:
    """Pick the officer whose turn it is (raises before anything changes if the section has none)."""
    office, section = row["office_code"], row["section"]
    cursor = ctx.writes.next_rotation(ctx.conn, office, section)
    officer, next_position = pick_officer(ctx.officers(office, section), cursor, office, section)
    ctx.writes.set_rotation(office, section, next_position)
    return officer


def _assign(ctx: HandlerContext, row: dict, officer: str, lane: Lane) -> None:
    row["officer_id"] = officer
    ctx.writes.new_assignments.append({
        "declaration_base": row["base"], "amendment": row["amendment"], "officer_id": officer,
        "office_code": row["office_code"], "section": row["section"], "lane": lane.value, "assigned_at": ctx.now,
        "decision": None, "decision_note": None, "decided_at": None,
    })


def _settle_if_paid(ctx: HandlerContext, row: dict) -> None:
    if row["state"] == DeclarationState.AWAITING_PAYMENT.value and row["paid_vnd"] >= row["total_vnd"]:
        _transition(row, DeclarationEvent.DUTY_PAID)
        row["closed_at"] = ctx.now


def amend(ctx: HandlerContext, cmd: Command) -> Outcome:
    row = _current(ctx, cmd)
    if row["paid_vnd"] > 0:
        raise DomainError("amend_after_payment",
                          f"declaration {row['number']} has duty paid; amend it through a post-clearance correction",
                          "number", 409)
    state = next_declaration_state(DeclarationState(row["state"]), DeclarationEvent.AMEND)
    number = DeclarationNumber.parse(row["number"]).amended()
    lines, totals = _assessed_lines(ctx, Kind(row["kind"]), cmd.payload["goods"], row["base"])
    previous = row["number"]
    row.update(state=state.value, number=str(number), amendment=number.amendment, lane=None, lane_rule=None, lane_reason=None,
               officer_id=None, registered_at=None, decided_at=None, updated_at=ctx.now, epoch=ctx.epoch, **totals)
    ctx.writes.replaced_lines[row["base"]] = lines
    ctx.writes.line_facts[row["base"]] = [(line["hs_code"], line["origin"]) for line in lines]
    ctx.writes.changed_bases.add(row["base"])
    _audit(ctx, cmd, Kind(row["kind"]).amend_message, str(number), {"previous": previous})
    return Outcome(200, declaration_view(row))


def pay(ctx: HandlerContext, cmd: Command) -> Outcome:
    row = _current(ctx, cmd)
    state = DeclarationState(row["state"])
    if state in (DeclarationState.PRE_DECLARED,) or state.is_terminal:
        raise DomainError("not_payable", f"declaration {row['number']} is {state.value}; pay after registration",
                          "number", 409)
    outstanding = row["total_vnd"] - row["paid_vnd"]
    amount = cmd.payload["amount_vnd"]
    if amount != outstanding:
        raise DomainError("amount_mismatch", f"amount_vnd must be the outstanding {outstanding} VND, got {amount}",
                          "amount_vnd", 422)
    row.update(paid_vnd=row["paid_vnd"] + amount, updated_at=ctx.now, epoch=ctx.epoch)
    _settle_if_paid(ctx, row)
    ctx.writes.changed_bases.add(row["base"])
    _audit(ctx, cmd, "pay", row["number"], {"amount_vnd": amount})
    return Outcome(200, declaration_view(row))


def decide(ctx: HandlerContext, cmd: Command) -> Outcome:
    row = _current(ctx, cmd)
    if cmd.principal.role is Role.OFFICER and row["officer_id"] != cmd.principal.subject:
        raise DomainError("not_assigned", f"declaration {row['number']} is assigned to another officer", "number", 403)
    approve = cmd.payload["decision"] == "approve"
    _transition(row, DeclarationEvent.OFFICER_APPROVE if approve else DeclarationEvent.OFFICER_REJECT)
    row.update(updated_at=ctx.now, epoch=ctx.epoch)
    if approve:
        _settle_if_paid(ctx, row)
    else:
        row["closed_at"] = ctx.now
    ctx.writes.decided_assignments.append({
        "b_base": row["base"], "b_amendment": row["amendment"], "decision": cmd.payload["decision"],
        "decision_note": cmd.payload.get("note"), "decided_at": ctx.now,
    })
    ctx.writes.changed_bases.add(row["base"])
    _audit(ctx, cmd, "decide", row["number"], {"decision": cmd.payload["decision"]})
    return Outcome(200, declaration_view(row))


HANDLERS: dict[Op, Callable[[HandlerContext, Command], Outcome]] = {
    Op.PRE_DECLARE: pre_declare, Op.REGISTER: register, Op.AMEND: amend, Op.PAY: pay, Op.DECIDE: decide,
}
