"""The clearance lifecycle over real HTTP: pre-declare, register, officer queue and decision, payment."""
from __future__ import annotations

from tests.integration.http_helpers import (
    IMPORT_SECTION,
    OFFICE,
    get,
    payload,
    post,
    predeclare,
    queue_numbers,
    refusal,
    registered_until,
)

# --- the lifecycle ---------------------------------------------------------------------------------------------------


def test_pre_declare_assigns_a_12_digit_number_and_computes_tax(client, served, tariff, enterprises, rows):
    tax_code = enterprises[0]
    body = payload(tariff, tax_code)
    before = rows()
    made = predeclare(client, served.tokens.declarant(tax_code), body)
    number = made["number"]
    assert len(number) == 12 and number.isascii() and number.isdigit()
    assert number[0] == "1" and number[-1] == "0"  # site A's digit; no amendment yet
    assert made["state"] == "pre_declared" and made["lane"] is None
    assert made["enterprise_tax_code"] == tax_code and made["office_code"] == OFFICE
    assert made["line_count"] == len(body["goods"])
    assert made["total_vnd"] == made["duty_vnd"] + made["vat_vnd"] and made["customs_value_vnd"] > 0
    assert rows() == (before[0] + 1, before[1] + len(body["goods"]))


def test_lifecycle_green_yellow_red_to_cleared(client, served, tariff, enterprises):
    found = registered_until(client, served, tariff, enterprises, {"green", "yellow", "red"})
    officers = served.db.officers_of(OFFICE, IMPORT_SECTION)
    assert len(officers) >= 2

    for lane, (reg, body, declarant) in found.items():
        number = reg["number"]
        assert reg["lane_rule"] and isinstance(reg["lane_rule"], str), reg
        assert reg["lane_reason"] and isinstance(reg["lane_reason"], str), reg
        if lane == "green":
            assert reg["officer_id"] is None
            assert reg["state"] == ("awaiting_payment" if reg["total_vnd"] else "cleared")
        else:
            officer = reg["officer_id"]
            assert officer in officers, reg
            assert reg["state"] == {"yellow": "document_check", "red": "inspection"}[lane]
            officer_token = served.tokens.officer(officer)
            # The assigned officer's queue lists it, and only what is assigned to that officer.
            queue = get(client, "/v1/officers/me/queue", officer_token).json()
            assert queue["officer_id"] == officer
            assert number in [item["number"] for item in queue["items"]]
            assert all(item["officer_id"] == officer and item["state"] in ("document_check", "inspection")
                       for item in queue["items"]), queue
            other = next(o for o in officers if o != officer)
            other_token = served.tokens.officer(other)
            assert number not in queue_numbers(client, other_token)
            # Another officer of the same office may read it, but not decide it.
            assert get(client, f"/v1/declarations/{number}", other_token).status_code == 200
            refusal(post(client, f"/v1/declarations/{number}/decision", other_token, {"decision": "approve"}),
                    403, "not_assigned", "number")
            decided = post(client, f"/v1/declarations/{number}/decision", officer_token,
                           {"decision": "approve", "note": f"{lane} lane: documents in order"})
            assert decided.status_code == 200, decided.text
            assert decided.json()["state"] == ("awaiting_payment" if reg["total_vnd"] else "cleared")
            assert number not in queue_numbers(client, officer_token)

        if reg["total_vnd"]:
            paid = post(client, f"/v1/declarations/{number}/payments", declarant, {"amount_vnd": reg["total_vnd"]})
            assert paid.status_code == 200, paid.text
            assert paid.json()["state"] == "cleared"

        shown = get(client, f"/v1/declarations/{number}", declarant)
        assert shown.status_code == 200, shown.text
        view = shown.json()
        assert view["state"] == "cleared" and view["lane"] == lane and view["paid_vnd"] == view["total_vnd"]
        assert [g["line_no"] for g in view["goods"]] == list(range(1, len(body["goods"]) + 1))
        assert [(g["hs_code"], g["origin"], g["unit"], g["currency"]) for g in view["goods"]] == [
            (g["hs_code"], g["origin"], g["unit"], g["currency"]) for g in body["goods"]]
        assert sum(g["duty_vnd"] + g["vat_vnd"] for g in view["goods"]) == view["total_vnd"]


def test_officer_queue_is_for_officers_only(client, served):
    refusal(get(client, "/v1/officers/me/queue", served.tokens.declarant(served.db.active_enterprises(1)[0])),
            403, "forbidden")
    refusal(get(client, "/v1/officers/me/queue"), 401, "unauthorized")
