"""Property-based tests of the intake over real HTTP (one served primary site for the module).

Whatever JSON-ish body a client POSTs to pre-declare or amend, the site answers without a 5xx, with JSON and an
`error.code` when it refuses, and the database changes only when it accepts: a refusal leaves the number of
declarations and goods lines as it was, an accepted pre-declaration adds exactly one declaration with its lines, an
accepted amendment replaces the declaration's lines and adds no declaration."""
from __future__ import annotations

import copy
import json
import random
import string
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from standby.domain.states import Kind
from standby.synthetic import make_declaration_payload

OFFICE = "01CA"
TOP_FIELDS = ("kind", "enterprise_tax_code", "office_code", "goods")
LINE_FIELDS = ("hs_code", "description", "quantity", "unit", "unit_price", "currency", "origin")
OTHER_FIELDS = ("amount_vnd", "decision", "note", "number", "lane")
ALNUM = string.ascii_uppercase + string.digits

SETTINGS = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# --- strategies ------------------------------------------------------------------------------------------------------

keys = st.sampled_from(TOP_FIELDS + LINE_FIELDS + OTHER_FIELDS) | st.text(max_size=12)
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
           | st.integers(min_value=-(10**40), max_value=10**40))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6), max_leaves=20)
# Values a hand-written client gets wrong: huge and non-finite numbers, numbers as odd strings, Unicode digits
# and letters, control characters, lone surrogates, very long text, wrong container types.
odd_values = st.sampled_from([
    10**30, -(10**30), 10**400, 1e308, -1e308, 5e-324, float("nan"), float("inf"), float("-inf"), -0.0, 0, -1,
    "NaN", "nan", "Infinity", "-Infinity", "1e5", "1E-7", "0x10", "-0", "+1", " 1", "1,5", "", " ",
    "１２３", "١٢٣٤٥٦٧٨٩٠", "²", "𝟘𝟙𝟚", "Hạt tiêu", "\u0000", "\ud800", "\u202e84713020", "a" * 3000,
    True, False, None, [], {}, [1], {"a": 1}, "import", "export", "01CA", "ZZZZ", "84713020", "77000000",
])
weird = odd_values | json_values | st.text(st.characters(codec=None, categories=["Cs", "Cc", "Nd", "No", "Lo"]),
                                           max_size=20)
numbers = (st.decimals(allow_nan=False, allow_infinity=False).map(str) | st.integers(-(10**13), 10**13)
           | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e13, max_value=1e13)
           | st.decimals(min_value=0, max_value=10**6, places=3).map(str))
# Values of the right JSON type whose meaning may still be wrong: the domain, not the schema, has to refuse them.
plausible = {
    "kind": st.sampled_from(["import", "export", "transit", "IMPORT"]),
    "enterprise_tax_code": st.from_regex(r"\A(\d{10}|\d{13})\Z") | st.text(string.digits, max_size=14),
    "office_code": st.sampled_from([OFFICE, "79CA", "01B1", "ZZZZ", "01ca"]) | st.text(ALNUM, min_size=4, max_size=4),
    "hs_code": st.sampled_from(["84713020", "77000000", "00000000", "9999999"]) | st.text(string.digits, max_size=9),
    "description": st.text(max_size=260),
    "quantity": numbers,
    "unit": st.sampled_from(["PCE", "KGM", "TNE", "SET", "pce", "XXX", ""]),
    "unit_price": numbers,
    "currency": st.sampled_from(["USD", "EUR", "VND", "CNY", "JPY", "XYZ", "usd"]) | st.text(ALNUM, max_size=4),
    "origin": st.sampled_from(["CN", "VN", "US", "cn", "CHN", ""]) | st.text(string.ascii_uppercase, max_size=3),
}


@st.composite
def mutated(draw, base: dict, top_fields: tuple[str, ...]) -> dict:
    """A valid body changed by zero to three mutations a client could make: plausible values of the right type
    (the domain must refuse the wrong ones), wrong types and shapes (the schema must refuse them)."""
    body = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, 3))):
        if not isinstance(body, dict):
            break
        what = draw(st.sampled_from(["plausible-field", "plausible-line", "plausible-line", "drop-field",
                                     "retype-field", "extra-field", "goods-empty", "goods-random", "goods-too-many",
                                     "line-drop", "line-retype", "line-extra", "line-not-dict", "body-not-dict"]))
        goods = body.get("goods")
        lines = goods if isinstance(goods, list) and goods and all(isinstance(g, dict) for g in goods) else None
        if what == "plausible-field":
            field = draw(st.sampled_from([f for f in top_fields if f in plausible] or ["kind"]))
            if field in top_fields:
                body[field] = draw(plausible[field])
        elif what == "drop-field" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif what == "retype-field":
            body[draw(st.sampled_from(top_fields))] = draw(weird)
        elif what == "extra-field":
            body[draw(keys.filter(lambda k: k not in top_fields))] = draw(weird)
        elif what == "goods-empty":
            body["goods"] = []
        elif what == "goods-random":
            body["goods"] = draw(st.lists(st.dictionaries(keys, weird, max_size=8), max_size=4))
        elif what == "goods-too-many" and lines:
            body["goods"] = [lines[0]] * draw(st.integers(51, 60))
        elif what.endswith("-line") or what.startswith("line-"):
            if not lines:
                continue
            i = draw(st.integers(0, len(lines) - 1))
            line = lines[i]
            field = draw(st.sampled_from(LINE_FIELDS))
            if what == "plausible-line":
                line[field] = draw(plausible[field])
            elif what == "line-drop":
                line.pop(field, None)
            elif what == "line-retype":
                line[field] = draw(weird)
            elif what == "line-extra":
                line[draw(keys.filter(lambda k: k not in LINE_FIELDS))] = draw(weird)
            else:
                lines[i] = draw(weird)
        elif what == "body-not-dict":
            body = draw(weird)
    return body


# --- fixtures and checks ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_bodies(served, tariff) -> list[dict]:
    rng = random.Random(7)
    return [make_declaration_payload(rng, Kind.IMPORT if i % 3 else Kind.EXPORT, code, OFFICE, tariff)
            for i, code in enumerate(served.db.active_enterprises(8))]


def send(client: httpx.Client, path: str, token: str, body) -> httpx.Response:
    # json.dumps (ensure_ascii, allow_nan) writes NaN/Infinity tokens and \\ud800 escapes, as sloppy clients do;
    # Python's json module on the server reads both.
    raw = json.dumps(body).encode()
    return client.post(path, content=raw, headers={"Authorization": f"Bearer {token}",
                                                   "Idempotency-Key": f"p-{uuid.uuid4().hex}",
                                                   "Content-Type": "application/json"})


def answered_cleanly(resp: httpx.Response) -> dict:
    assert resp.status_code < 500, f"{resp.status_code} for {resp.request.content[:300]!r}: {resp.text[:500]}"
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    answer = resp.json()
    event(f"{resp.status_code} {answer['error']['code'] if resp.status_code >= 400 else 'accepted'}")
    if resp.status_code >= 400:
        error = answer["error"]
        assert isinstance(error["code"], str) and error["code"], answer
        assert isinstance(error["message"], str) and error["message"], answer
        assert isinstance(error.get("field", ""), str), answer
    return answer


# --- properties ------------------------------------------------------------------------------------------------------


@SETTINGS
@given(body=json_values | st.dictionaries(st.sampled_from(TOP_FIELDS) | keys, weird, max_size=6))
def test_arbitrary_bodies_never_5xx_and_never_write(client, served, rows, body):
    before = rows()
    answer = answered_cleanly(send(client, "/v1/declarations", served.tokens.operator(), body))
    assert "error" in answer, f"an arbitrary body was accepted: {body!r}"
    assert rows() == before


@SETTINGS
@given(data=st.data())
def test_mutated_pre_declarations_write_one_declaration_or_nothing(client, served, rows, valid_bodies, data):
    base = data.draw(st.sampled_from(valid_bodies), label="base")
    body = data.draw(mutated(base, TOP_FIELDS), label="body")
    as_declarant = data.draw(st.booleans(), label="as_declarant")
    token = served.tokens.declarant(base["enterprise_tax_code"]) if as_declarant else served.tokens.operator()
    before = rows()
    resp = send(client, "/v1/declarations", token, body)
    answer = answered_cleanly(resp)
    after = rows()
    if resp.status_code >= 400:
        assert after == before, answer
    else:
        assert resp.status_code == 201, answer
        assert answer["line_count"] == len(body["goods"])
        assert after == (before[0] + 1, before[1] + answer["line_count"]), answer


@pytest.fixture(scope="module")
def amendable(client, served, valid_bodies):
    """The declaration the amendment properties work on: {number, line_count}; renewed when it runs out of
    amendments (the 12th digit stops at 9)."""
    state: dict = {}

    def renew() -> None:
        resp = send(client, "/v1/declarations", served.tokens.operator(), valid_bodies[0])
        assert resp.status_code == 201, resp.text
        state.update(number=resp.json()["number"], line_count=resp.json()["line_count"])

    renew()
    state["renew"] = renew
    return state


@SETTINGS
@given(data=st.data())
def test_mutated_amendments_replace_the_lines_or_change_nothing(client, served, rows, valid_bodies, amendable, data):
    if amendable["number"].endswith("9"):
        amendable["renew"]()
    current = amendable["number"]
    base = {"goods": data.draw(st.sampled_from(valid_bodies), label="base")["goods"]}
    body = data.draw(st.just(base) | mutated(base, ("goods",)), label="body")
    superseded = current[:11] + str(int(current[11]) - 1) if current[11] != "0" else "199999999990"
    number = data.draw(st.sampled_from([current, current, current, superseded, "199999999990", "12345",
                                        "abcdefghijkl"]), label="number")
    before = rows()
    resp = send(client, f"/v1/declarations/{number}/amendments", served.tokens.operator(), body)
    answer = answered_cleanly(resp)
    after = rows()
    if resp.status_code >= 400:
        assert after == before, answer
    else:
        assert resp.status_code == 200 and number == current, answer
        assert answer["number"] == current[:11] + str(int(current[11]) + 1), answer
        assert answer["line_count"] == len(body["goods"])
        assert after == (before[0], before[1] - amendable["line_count"] + answer["line_count"]), answer
        amendable.update(number=answer["number"], line_count=answer["line_count"])


DIGITS_OF_ALL_KINDS = "0123456789" "０１２" "١٢٣" "۴۵" "𝟘𝟙" "²³¹"  # ASCII, fullwidth, Arabic-Indic, math, superscript


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(number=st.text(st.sampled_from(DIGITS_OF_ALL_KINDS), min_size=11, max_size=13))
def test_any_number_in_the_path_is_answered_without_5xx(served, rows, number):
    """ENGINE BUG (see test_http_api.test_a_number_with_non_ascii_digits_is_400): a 12-character number of Unicode
    digits with a superscript in it passes str.isdigit() and then fails int(), answered as a 500."""
    before = rows()
    with httpx.Client(base_url=served.url, timeout=60) as fresh:  # a 500 closes the connection
        answer = answered_cleanly(send(fresh, f"/v1/declarations/{number}/amendments", served.tokens.operator(),
                                       {"goods": []}))
    assert "error" in answer
    assert rows() == before
