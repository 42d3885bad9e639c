"""Bad input over real HTTP: a clear 4xx with a machine code and the field at fault, never a 5xx, nothing written."""
from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.integration.http_helpers import bearer, get, payload, post, predeclare, refusal, register

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
