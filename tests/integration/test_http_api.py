"""The site's HTTP API over real HTTP: one primary site (real SQLite, Ray ClearanceWorkers, uvicorn) shared by the
module, driven with httpx like a real client.

Covers the clearance lifecycle end to end, authentication and authorisation, idempotency, refusal of bad input (a
clear 4xx with a machine code and the field at fault, never a 5xx, nothing written), a standby site's refusal of
writes, and the operational endpoints (/healthz, /readyz, /metrics, /openapi.json)."""
from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from standby.domain.states import Kind, SiteRole
from standby.store.schema import declarations, goods_lines
from standby.synthetic import make_declaration_payload
from tests.conftest import make_site_db, serve_site

OFFICE = "01CA"
OTHER_OFFICE = "79CA"
IMPORT_SECTION = "01"
NEW_KEY = object()  # post(): make up a fresh Idempotency-Key
INTAKE_PATHS = ("/v1/declarations", "/v1/declarations/{number}/registration", "/v1/declarations/{number}/amendments",
                "/v1/declarations/{number}/payments", "/v1/declarations/{number}/decision",
                "/v1/declarations/{number}", "/v1/officers/me/queue")


# --- helpers ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def rows(served):
    """rows() -> (declarations, goods lines) now in site A's database."""
    engine = served.db.engine(writer=False)

    def count() -> tuple[int, int]:
        with engine.connect() as conn:
            return (conn.execute(select(func.count()).select_from(declarations)).scalar_one(),
                    conn.execute(select(func.count()).select_from(goods_lines)).scalar_one())

    yield count
    engine.dispose()


@pytest.fixture(scope="module")
def enterprises(served) -> list[str]:
    return served.db.active_enterprises(60)


_rng = random.Random(20250701)


def payload(tariff, tax_code: str, office: str = OFFICE, kind: Kind = Kind.IMPORT) -> dict:
    return make_declaration_payload(_rng, kind, tax_code, office, tariff)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def post(client: httpx.Client, path: str, token: str | None = None, body=None, *, key=NEW_KEY,
         headers: dict | None = None, **kw) -> httpx.Response:
    """POST with a bearer token and an Idempotency-Key (a fresh one unless `key` is given; None sends none)."""
    sent = dict(bearer(token)) if token else {}
    if key is NEW_KEY:
        key = f"k-{uuid.uuid4().hex}"
    if key is not None:
        sent["Idempotency-Key"] = key
    sent.update(headers or {})
    if body is not None:
        kw["json"] = body
    return client.post(path, headers=sent, **kw)


def get(client: httpx.Client, path: str, token: str | None = None, **kw) -> httpx.Response:
    return client.get(path, headers=bearer(token) if token else {}, **kw)


def refusal(resp: httpx.Response, status: int, code: str, field: str | None = None, sentence: bool = True) -> dict:
    """Assert the one error envelope: status, JSON {"error": {"code", "message", "field"?}}; return the error."""
    assert resp.status_code == status, f"expected {status} {code}, got {resp.status_code}: {resp.text}"
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    error = resp.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    if sentence:
        assert len(error["message"].split()) >= 3, error
    if field is not None:
        assert error.get("field") == field, error
    return error


def predeclare(client, token: str, body: dict) -> dict:
    resp = post(client, "/v1/declarations", token, body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def register(client, token: str, number: str) -> dict:
    resp = post(client, f"/v1/declarations/{number}/registration", token)
    assert resp.status_code == 200, resp.text
    return resp.json()


def registered_until(client, served, tariff, enterprises, wanted: set[str], tries: int = 600) -> dict[str, tuple]:
    """Pre-declare and register (as each enterprise's declarant) until every lane in `wanted` has come up once.
    Returns lane -> (registration body, pre-declare payload, declarant token)."""
    found: dict[str, tuple] = {}
    for i in range(tries):
        tax_code = enterprises[i % len(enterprises)]
        token = served.tokens.declarant(tax_code)
        body = payload(tariff, tax_code)
        made = predeclare(client, token, body)
        reg = register(client, token, made["number"])
        if reg["lane"] in wanted and reg["lane"] not in found:
            found[reg["lane"]] = (reg, body, token)
            if set(found) == wanted:
                return found
    raise AssertionError(f"lanes {sorted(wanted - set(found))} did not come up in {tries} registrations")


def queue_numbers(client, token: str) -> list[str]:
    resp = get(client, "/v1/officers/me/queue", token)
    assert resp.status_code == 200, resp.text
    return [item["number"] for item in resp.json()["items"]]


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


# --- idempotency -----------------------------------------------------------------------------------------------------


def test_a_repeated_request_is_answered_once(client, served, tariff, enterprises, rows):
    tax_code = enterprises[5]
    token = served.tokens.declarant(tax_code)
    body = payload(tariff, tax_code)
    key = f"pre-{uuid.uuid4().hex}"
    before = rows()
    first = post(client, "/v1/declarations", token, body, key=key)
    again = post(client, "/v1/declarations", token, body, key=key)
    assert first.status_code == again.status_code == 201, (first.text, again.text)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert rows() == (before[0] + 1, before[1] + len(body["goods"]))

    other = payload(tariff, tax_code)
    refusal(post(client, "/v1/declarations", token, other, key=key), 422, "idempotency_key_reused")
    assert rows() == (before[0] + 1, before[1] + len(body["goods"]))

    # A registration retried with its key gets the same lane; a refused first answer is replayed too.
    number = first.json()["number"]
    reg_key = f"reg-{uuid.uuid4().hex}"
    reg = post(client, f"/v1/declarations/{number}/registration", token, key=reg_key)
    reg_again = post(client, f"/v1/declarations/{number}/registration", token, key=reg_key)
    assert reg.status_code == reg_again.status_code == 200
    assert reg_again.headers["idempotent-replayed"] == "true" and reg_again.json() == reg.json()
    twice = post(client, f"/v1/declarations/{number}/registration", token)
    refusal(twice, 409, "already_registered")


def test_an_idempotency_key_is_per_principal(client, served, tariff, enterprises, rows):
    key = f"shared-{uuid.uuid4().hex}"
    before = rows()
    for tax_code in enterprises[6:8]:
        made = post(client, "/v1/declarations", served.tokens.declarant(tax_code), payload(tariff, tax_code), key=key)
        assert made.status_code == 201 and "idempotent-replayed" not in made.headers, made.text
    assert rows()[0] == before[0] + 2


def test_the_idempotency_key_is_required(client, served, tariff, enterprises, rows):
    token = served.tokens.declarant(enterprises[8])
    before = rows()
    refusal(post(client, "/v1/declarations", token, payload(tariff, enterprises[8]), key=None), 400,
            "idempotency_key_required")
    assert rows() == before


@pytest.mark.parametrize("key", ["x" * 200, "has spaces", "", "semi;colon", "slash/key", "a" * 129,
                                 "é-accent".encode()], ids=["200-chars", "spaces", "empty", "semicolon", "slash", "129-chars", "non-ascii"])
def test_a_malformed_idempotency_key_is_refused(client, served, tariff, enterprises, rows, key):
    token = served.tokens.declarant(enterprises[8])
    before = rows()
    refusal(post(client, "/v1/declarations", token, payload(tariff, enterprises[8]), key=key), 400,
            "idempotency_key_invalid")
    assert rows() == before


# --- bad input -------------------------------------------------------------------------------------------------------


def _goods_line(tariff, tax_code: str) -> dict:
    return payload(tariff, tax_code)["goods"][0]


def _bad(change):
    """A pre-declare body: a valid one for `tax_code`, changed by `change(body, tariff)`."""
    def make(tariff, tax_code):
        body = payload(tariff, tax_code)
        change(body, tariff)
        return body
    return make


def _set_line(field, value):
    def change(body, _tariff):
        body["goods"][0][field] = value
    return change


BAD_BODIES = {
    # name: (body maker, status, code, field, words the message must contain)
    "wrong-hs-code": (_bad(_set_line("hs_code", "1234ABCD")), 422, "hs_code_invalid", "goods[0].hs_code",
                      ["goods[0].hs_code"]),
    "reserved-hs-chapter": (_bad(_set_line("hs_code", "77001000")), 422, "hs_code_invalid", "goods[0].hs_code",
                            ["goods[0].hs_code"]),
    "51-goods-lines": (_bad(lambda b, t: b.update(goods=[b["goods"][0]] * 51)), 422, "too_many_lines", "goods",
                       ["goods", "50"]),
    "no-goods-lines": (_bad(lambda b, t: b.update(goods=[])), 422, "goods_missing", "goods", ["goods"]),
    "negative-unit-price": (_bad(_set_line("unit_price", "-1.50")), 422, "value_invalid", "goods[0].unit_price",
                            ["goods[0].unit_price", "negative"]),
    "negative-quantity": (_bad(_set_line("quantity", -3)), 422, "quantity_invalid", "goods[0].quantity",
                          ["goods[0].quantity"]),
    "unknown-office": (_bad(lambda b, t: b.update(office_code="ZZZZ")), 422, "office_unknown", "office_code",
                       ["ZZZZ"]),
    "bad-office-pattern": (_bad(lambda b, t: b.update(office_code="01ca")), 422, "invalid_request", "office_code",
                           ["office_code"]),
    "bad-tax-code": (_bad(lambda b, t: b.update(enterprise_tax_code="12345")), 422, "invalid_request",
                     "enterprise_tax_code", ["enterprise_tax_code"]),
    "unknown-enterprise": (_bad(lambda b, t: b.update(enterprise_tax_code="9999999999")), 422, "enterprise_unknown",
                           "enterprise_tax_code", ["9999999999"]),
    "unknown-kind": (_bad(lambda b, t: b.update(kind="transit")), 422, "invalid_request", "kind", ["kind"]),
    "unknown-field": (_bad(lambda b, t: b.update(surprise=1)), 422, "invalid_request", "surprise", ["surprise"]),
    "unknown-line-field": (_bad(_set_line("colour", "red")), 422, "invalid_request", "goods[0].colour",
                           ["goods[0].colour"]),
    "missing-field": (_bad(lambda b, t: b.pop("kind")), 422, "invalid_request", "kind", ["kind"]),
    "unknown-currency": (_bad(_set_line("currency", "XYZ")), 422, "currency_unknown", "goods[0].currency",
                         ["goods[0].currency"]),
    "not-an-object": (lambda t, c: [1, 2, 3], 422, "invalid_request", None, []),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_pre_declare_bodies_are_refused_naming_the_field(client, served, tariff, enterprises, rows, case):
    make, status, code, field, words = BAD_BODIES[case]
    tax_code = enterprises[9]
    before = rows()
    error = refusal(post(client, "/v1/declarations", served.tokens.operator(), make(tariff, tax_code)), status, code,
                    field)
    for word in words:
        assert word in error["message"], error
    assert rows() == before


@pytest.mark.parametrize("content, status, code", [
    (b'{"kind": "import", "goods": [', 400, "malformed_json"),
    (b"{'kind': 'import'}", 400, "malformed_json"),
    (b"\xff\xfe\x00garbage", 400, "malformed_json"),
    (b'{"kind": "\xff"}', 400, "malformed_json"),
    (b'{"kind": 1' + b"0" * 5000 + b"}", 400, "malformed_json"),
    (b"", 422, "body_missing"),
], ids=["truncated", "single-quotes", "utf16-bom-garbage", "invalid-utf8", "int-over-4300-digits", "empty"])
def test_a_body_that_is_not_json_is_refused(client, served, rows, content, status, code):
    """ENGINE BUG for invalid UTF-8 and over-long integers: FastAPI raises only json.JSONDecodeError as a validation
    error; any other decoding error (UnicodeDecodeError, ValueError from int's 4300-digit limit) becomes
    HTTPException(400, "There was an error parsing the body"), which errors.on_http_error answers as `http_error`."""
    before = rows()
    resp = post(client, "/v1/declarations", served.tokens.operator(), content=content,
                headers={"Content-Type": "application/json"})
    refusal(resp, status, code)
    assert rows() == before


def _with_surrogate(where: str):
    def make(tariff, tax_code):
        body = payload(tariff, tax_code)
        if where == "top-level-key":
            body["odd\ud800"] = 1
        elif where == "goods-line-key":
            body["goods"][0]["odd\udfff"] = 1
        elif where == "description":
            body["goods"][0]["description"] = "h\ud800ng"
        else:
            body["kind"] = "\udc80"
        return body
    return make


@pytest.mark.parametrize("where", ["description", "kind", "top-level-key", "goods-line-key"])
def test_a_lone_surrogate_in_the_json_is_refused_cleanly(served, tariff, enterprises, rows, where):
    """JSON may escape a lone UTF-16 surrogate ("\\ud800"); Python decodes it into a str that cannot be encoded
    as UTF-8, so it must be refused before it reaches a message, a log line or the database."""
    raw = json.dumps(_with_surrogate(where)(tariff, enterprises[9])).encode()  # ensure_ascii: valid JSON text
    before = rows()
    with httpx.Client(base_url=served.url, timeout=60) as fresh:  # a 500 closes the connection
        resp = post(fresh, "/v1/declarations", served.tokens.operator(), content=raw,
                    headers={"Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "invalid_request"
    assert rows() == before


def test_an_oversize_body_is_413_with_or_without_content_length(served, tariff, enterprises, rows):
    """ENGINE BUG for the streamed body: errors.BodyLimit raises _TooLarge from receive(), but FastAPI's body reader
    turns any exception but JSONDecodeError/HTTPException into HTTPException(400), so BodyLimit never sees _TooLarge
    and the client gets 400 `http_error` instead of 413 `body_too_large`."""
    body = payload(tariff, enterprises[9])
    body["goods"][0]["description"] = "x" * (300 * 1024)
    raw = json.dumps(body).encode()
    headers = {**bearer(served.tokens.operator()), "Content-Type": "application/json"}
    before = rows()

    def chunks():
        for i in range(0, len(raw), 16 * 1024):
            yield raw[i:i + 16 * 1024]

    for content in (raw, chunks()):  # bytes are sent with Content-Length; a generator is streamed chunked
        with httpx.Client(base_url=served.url, timeout=60) as fresh:
            resp = fresh.post("/v1/declarations", content=content,
                              headers={**headers, "Idempotency-Key": f"big-{uuid.uuid4().hex}"})
        assert ("content-length" in resp.request.headers) == isinstance(content, bytes)
        refusal(resp, 413, "body_too_large")
    assert rows() == before


@pytest.mark.parametrize("number", ["12345", "1234567890123", "abcdefghijkl", "012345678901", "1234 5678901"])
def test_a_number_that_is_not_12_digits_is_400(client, served, number):
    ops = served.tokens.operator()
    refusal(get(client, f"/v1/declarations/{number}", ops), 400, "number_invalid", "number")
    refusal(post(client, f"/v1/declarations/{number}/registration", ops), 400, "number_invalid", "number")
    refusal(post(client, f"/v1/declarations/{number}/payments", ops, {"amount_vnd": 1}), 400, "number_invalid",
            "number")


ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


@pytest.mark.parametrize("spelling", ["superscript-two", "arabic-indic"])
def test_a_number_with_non_ascii_digits_is_400(served, tariff, enterprises, spelling):
    """ENGINE BUG (standby/domain/numbers.py, DeclarationNumber.parse): it checks `text.isdigit()`, which is true for
    any Unicode digit. '²' passes it and then int() raises ValueError, which nothing catches: 500 and a dropped
    connection. Arabic-Indic digits pass it and int() reads them, so '١٠٠٠...' is taken as an alias of the ASCII
    number and served. Both should be 400 number_invalid."""
    ops = served.tokens.operator()
    with httpx.Client(base_url=served.url, timeout=60) as fresh:  # a 500 closes the connection
        if spelling == "superscript-two":
            number = "1²3456789012"
        else:
            number = predeclare(fresh, ops, payload(tariff, enterprises[9]))["number"].translate(ARABIC_INDIC)
        refusal(get(fresh, f"/v1/declarations/{number}", ops), 400, "number_invalid", "number")
        refusal(post(fresh, f"/v1/declarations/{number}/registration", ops), 400, "number_invalid", "number")


def test_an_unknown_number_is_404(client, served, rows):
    ops = served.tokens.operator()
    unknown = "199999999990"
    before = rows()
    refusal(get(client, f"/v1/declarations/{unknown}", ops), 404, "not_found", "number")
    refusal(post(client, f"/v1/declarations/{unknown}/registration", ops), 404, "not_found", "number")
    refusal(post(client, f"/v1/declarations/{unknown}/payments", ops, {"amount_vnd": 1}), 404, "not_found")
    refusal(client.get("/v1/no-such-path"), 404, "not_found", sentence=False)  # routing: Starlette's "Not Found"
    refusal(client.put("/v1/declarations"), 405, "method_not_allowed", sentence=False)
    assert rows() == before


def test_paying_the_wrong_amount_and_registering_twice_are_refused(client, served, tariff, enterprises, rows):
    ops = served.tokens.operator()
    for tax_code in enterprises[20:50]:
        made = predeclare(client, ops, payload(tariff, tax_code))
        reg = register(client, ops, made["number"])
        if reg["total_vnd"] > 0 and reg["state"] != "cleared":
            break
    else:
        raise AssertionError("no registered declaration with duty due")
    number, due = reg["number"], reg["total_vnd"]
    before = rows()
    refusal(post(client, f"/v1/declarations/{number}/registration", ops), 409, "already_registered", "number")
    for amount in (due - 1, due + 1, 0):
        error = refusal(post(client, f"/v1/declarations/{number}/payments", ops, {"amount_vnd": amount}), 422,
                        "amount_mismatch", "amount_vnd")
        assert str(due) in error["message"]
    refusal(post(client, f"/v1/declarations/{number}/payments", ops, {"amount_vnd": -5}), 422, "invalid_request",
            "amount_vnd")
    refusal(post(client, f"/v1/declarations/{number}/payments", ops, {"amount_vnd": "lots"}), 422,
            "invalid_request", "amount_vnd")
    refusal(post(client, f"/v1/declarations/{number}/decision", ops, {"decision": "maybe"}), 422,
            "invalid_request", "decision")
    assert rows() == before
    view = get(client, f"/v1/declarations/{number}", ops).json()
    assert view["paid_vnd"] == 0 and view["state"] == reg["state"]


# --- a standby site refuses writes -----------------------------------------------------------------------------------


def test_a_standby_site_refuses_writes_and_serves_reads(client, served, tariff, tmp_path_factory, org):
    standby_db = make_site_db(tmp_path_factory.mktemp("site-b"), org, site_id="B", role=SiteRole.STANDBY,
                              site_digit=2, enterprises_count=300)
    site_b = serve_site(standby_db)
    try:
        engine = standby_db.engine(writer=False)

        def b_rows() -> tuple[int, int]:
            with engine.connect() as conn:
                return (conn.execute(select(func.count()).select_from(declarations)).scalar_one(),
                        conn.execute(select(func.count()).select_from(goods_lines)).scalar_one())

        with httpx.Client(base_url=site_b.url, timeout=60) as b:
            tax_code = standby_db.active_enterprises(1)[0]
            before = b_rows()
            for token in (site_b.tokens.declarant(tax_code), site_b.tokens.operator()):
                error = refusal(post(b, "/v1/declarations", token, payload(tariff, tax_code)), 503, "not_primary")
                assert "site A" in error["message"] and "standby" in error["message"], error
            assert b_rows() == before
            engine.dispose()

            ops = site_b.tokens.operator()
            refusal(get(b, "/v1/declarations/299999999990", ops), 404, "not_found", "number")
            shown = get(b, "/v1/site", ops)
            assert shown.status_code == 200, shown.text
            assert shown.json() == {"site": "B", "role": "standby", "epoch": 1, "intake_state": "open",
                                    "primary_site": "A"}
            assert b.get("/healthz").json() == {"status": "ok", "site": "B"}
            not_ready = b.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["role"] == "standby" and not_ready.json()["ready"] is False
            gauges = b.get("/metrics").text
            assert 'clearance_site_role{role="standby",site="B"} 1.0' in gauges

        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["role"] == "primary" and ready.json()["ready"] is True
    finally:
        site_b.stop()


# --- operations ------------------------------------------------------------------------------------------------------


def test_healthz(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "ok", "site": "A"}


def test_metrics_in_prometheus_text_format(client, served, tariff, enterprises):
    tax_code = enterprises[11]
    token = served.tokens.declarant(tax_code)
    register(client, token, predeclare(client, token, payload(tariff, tax_code))["number"])
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    for name in ("clearance_requests_total", "clearance_decision_latency_seconds_bucket",
                 "clearance_batch_size_bucket", "clearance_intake_state", "clearance_site_role",
                 "clearance_site_epoch", "clearance_worker_restarts_total", "clearance_lane_decisions_total",
                 "clearance_request_latency_seconds_bucket", "clearance_http_errors_total"):
        assert name in text, name
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def total(name: str, **labels) -> float:
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    assert total("clearance_decision_latency_seconds_count") > 0
    assert total("clearance_requests_total", op="register", outcome="accepted") > 0
    assert total("clearance_batch_size_count") > 0
    assert total("clearance_intake_state", site="A", state="open") == 1
    assert total("clearance_intake_state", site="A", state="frozen") == 0
    assert total("clearance_site_role", site="A", role="primary") == 1
    assert total("clearance_site_epoch", site="A") == 1


def test_openapi_lists_the_intake_paths(client):
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    paths = resp.json()["paths"]
    for path in INTAKE_PATHS:
        assert path in paths, path
    assert "post" in paths["/v1/declarations"]
    assert "/metrics" not in paths
