"""Authentication and authorisation over real HTTP; tokens never leak into responses or logs."""
from __future__ import annotations

import logging
import uuid

import httpx

from tests.integration.http_helpers import (
    IMPORT_SECTION,
    OFFICE,
    OTHER_OFFICE,
    bearer,
    get,
    payload,
    post,
    predeclare,
    refusal,
    register,
)

# --- authentication and authorisation -------------------------------------------------------------------------------


def test_no_token_or_an_unknown_token_is_401_with_www_authenticate(client, served, tariff, enterprises, rows):
    body = payload(tariff, enterprises[0])
    before = rows()
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"},
                    bearer("no-such-token"), bearer(f"{served.tokens.operator()}x")):
        for resp in (post(client, "/v1/declarations", body=body, headers=headers),
                     client.get("/v1/declarations/100000000010", headers=headers),
                     client.get("/v1/site", headers=headers)):
            refusal(resp, 401, "unauthorized")
            assert resp.headers["www-authenticate"] == "Bearer"
    assert rows() == before


def test_roles_and_enterprises_are_enforced(client, served, tariff, enterprises, rows):
    mine, theirs = enterprises[1], enterprises[2]
    my_token, their_token = served.tokens.declarant(mine), served.tokens.declarant(theirs)
    made = predeclare(client, my_token, payload(tariff, mine))
    number = made["number"]
    officers = served.db.officers_of(OFFICE, IMPORT_SECTION)
    stranger = served.db.officers_of(OTHER_OFFICE, IMPORT_SECTION)[0]
    before = rows()

    # An officer may not pre-declare.
    refusal(post(client, "/v1/declarations", served.tokens.officer(officers[0]), payload(tariff, mine)),
            403, "forbidden")
    # A declarant acts for its own enterprise only.
    refusal(post(client, "/v1/declarations", my_token, payload(tariff, theirs)), 403, "forbidden",
            "enterprise_tax_code")
    refusal(post(client, f"/v1/declarations/{number}/registration", their_token), 403, "forbidden")
    refusal(get(client, f"/v1/declarations/{number}", their_token), 403, "forbidden")
    refusal(post(client, f"/v1/declarations/{number}/payments", their_token, {"amount_vnd": 0}), 403, "forbidden")
    refusal(post(client, f"/v1/declarations/{number}/amendments", their_token,
                 {"goods": payload(tariff, theirs)["goods"]}), 403, "forbidden")
    # A declarant may not decide.
    refusal(post(client, f"/v1/declarations/{number}/decision", my_token, {"decision": "approve"}), 403, "forbidden")
    # An officer of another office may not read it; one of its own office may.
    refusal(get(client, f"/v1/declarations/{number}", served.tokens.officer(stranger)), 403, "forbidden")
    assert get(client, f"/v1/declarations/{number}", served.tokens.officer(officers[0])).status_code == 200
    assert rows() == before
    shown = get(client, f"/v1/declarations/{number}", my_token).json()
    assert shown["state"] == "pre_declared" and shown["number"] == number


def test_an_operator_can_do_everything(client, served, tariff, enterprises):
    ops = served.tokens.operator()
    for i, tax_code in enumerate(enterprises[10:40]):
        made = predeclare(client, ops, payload(tariff, tax_code))
        amended = post(client, f"/v1/declarations/{made['number']}/amendments", ops,
                       {"goods": payload(tariff, tax_code)["goods"]})
        assert amended.status_code == 200, amended.text
        number = amended.json()["number"]
        assert number == made["number"][:11] + "1"
        reg = register(client, ops, number)
        if reg["lane"] == "green":
            continue
        decided = post(client, f"/v1/declarations/{number}/decision", ops, {"decision": "approve"})
        assert decided.status_code == 200, decided.text
        if reg["total_vnd"]:
            paid = post(client, f"/v1/declarations/{number}/payments", ops, {"amount_vnd": reg["total_vnd"]})
            assert paid.status_code == 200, paid.text
        view = get(client, f"/v1/declarations/{number}", ops).json()
        assert view["state"] == "cleared" and view["enterprise_tax_code"] == tax_code
        site = get(client, "/v1/site", ops)
        assert site.status_code == 200 and site.json()["role"] == "primary"
        return
    raise AssertionError("no yellow or red declaration for the operator in 30 tries")


def test_tokens_never_appear_in_responses_or_server_logs(served, tariff, enterprises, caplog):
    # The server runs in this process: listen to every logger at uvicorn's TRACE level (5). uvicorn's own loggers do
    # not propagate to the root logger, so the capture handler is attached to them directly as well.
    for name in (None, "uvicorn", "uvicorn.error", "uvicorn.access", "standby", "fastapi", "starlette", "ray"):
        caplog.set_level(5, logger=name)
    extra = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.access")]
    for lg in extra:
        lg.addHandler(caplog.handler)
    tax_code = enterprises[3]
    declarant = served.tokens.declarant(tax_code)
    officer = served.tokens.officer(served.db.officers_of(OFFICE, IMPORT_SECTION)[0])
    operator = served.tokens.operator()
    unknown = f"t-unknown-{uuid.uuid4().hex}"
    responses = []
    try:
        with httpx.Client(base_url=served.url, timeout=60) as client:  # a new connection, so uvicorn traces it
            made = post(client, "/v1/declarations", declarant, payload(tariff, tax_code))
            number = made.json()["number"]
            responses += [
                made,
                post(client, "/v1/declarations", declarant, payload(tariff, enterprises[4])),  # 403
                post(client, "/v1/declarations", officer, payload(tariff, tax_code)),  # 403
                post(client, "/v1/declarations", unknown, payload(tariff, tax_code)),  # 401
                post(client, "/v1/declarations", declarant, {"kind": "import"}),  # 422
                post(client, "/v1/declarations", declarant, content=b"{not json",
                     headers={"Content-Type": "application/json"}),  # 400
                post(client, "/v1/declarations", declarant, payload(tariff, tax_code), key=None),  # 400
                post(client, f"/v1/declarations/{number}/registration", declarant),
                post(client, f"/v1/declarations/{number}/payments", declarant, {"amount_vnd": 10**15}),  # 422
                post(client, f"/v1/declarations/{number}/decision", officer, {"decision": "approve"}),
                get(client, f"/v1/declarations/{number}", declarant),
                get(client, f"/v1/declarations/{number}", officer),
                get(client, "/v1/declarations/123", operator),  # 400
                get(client, "/v1/officers/me/queue", officer),
                get(client, "/v1/site", operator),
                get(client, "/metrics"),
            ]
    finally:
        for lg in extra:
            lg.removeHandler(caplog.handler)
    assert any(r.name.startswith("uvicorn") for r in caplog.records), "the server's logging was not captured"
    assert made.status_code == 201
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    for token in (declarant, officer, operator, unknown):
        assert token not in logged, f"token {token!r} was logged"
        for resp in responses:
            assert token not in resp.text, f"token echoed by {resp.request.method} {resp.request.url}"
            assert all(token not in value for value in resp.headers.values())
