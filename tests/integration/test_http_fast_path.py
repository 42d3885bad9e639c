"""The hot routes' fast path (standby/api/fast_path.py) over real HTTP: it answers the well-formed requests with what
FastAPI would answer, and passes every other request to FastAPI untouched, so each refusal stays FastAPI's."""
from __future__ import annotations

import uuid

import pytest

from tests.integration.http_helpers import bearer, not_taking_writes, payload, post, predeclare, refusal

UNKNOWN = "199999999990"
# A parameter on the media type is valid JSON to FastAPI, and not the fast path's exact shape: the same request
# answered by FastAPI, to compare with.
VIA_FASTAPI = {"Content-Type": "application/json; charset=utf-8"}


@pytest.fixture
def answered(served):
    """answered() -> the fast path's count per route since the test began."""
    counter = served.site.app.state.hot_routes.answered
    start = dict(counter)
    return lambda: {name: n - start.get(name, 0) for name, n in counter.items() if n - start.get(name, 0)}


def _same_answer(fast, slow) -> None:
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    assert sorted(fast.headers.keys()) == sorted(slow.headers.keys())
    assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
    assert sorted(fast.json()) == sorted(slow.json())


def test_a_declarations_whole_life_is_answered_by_the_fast_path(client, served, tariff, enterprises, answered):
    tax_code = enterprises[50]
    token = served.tokens.declarant(tax_code)
    made = predeclare(client, token, payload(tariff, tax_code))
    number = made["number"]
    goods = payload(tariff, tax_code)["goods"]
    amended = post(client, f"/v1/declarations/{number}/amendments", token, {"goods": goods})
    assert amended.status_code == 200, amended.text
    number = amended.json()["number"]
    registered = post(client, f"/v1/declarations/{number}/registration", token)
    assert registered.status_code == 200, registered.text
    read = client.get(f"/v1/declarations/{number}", headers=bearer(token))
    assert read.status_code == 200 and read.json()["number"] == number
    owed = read.json()["total_vnd"] - read.json()["paid_vnd"]
    if registered.json()["lane"] == "green":
        paid = post(client, f"/v1/declarations/{number}/payments", token, {"amount_vnd": owed})
        assert paid.status_code == 200 and paid.json()["paid_vnd"] == read.json()["total_vnd"], paid.text
    else:
        decided = post(client, f"/v1/declarations/{number}/decision", served.tokens.operator(),
                       {"decision": "approve", "note": "fast path test"})
        assert decided.status_code == 200, decided.text
    assert answered() == {"declarations": 1, "amendments": 1, "registration": 1, "read": 1,
                          "payments" if registered.json()["lane"] == "green" else "decision": 1}


def test_a_fast_answer_has_the_status_headers_and_body_fields_of_fastapis(client, served, tariff, enterprises,
                                                                          answered):
    tax_code = enterprises[51]
    token = served.tokens.declarant(tax_code)
    fast = post(client, "/v1/declarations", token, payload(tariff, tax_code))
    slow = post(client, "/v1/declarations", token, payload(tariff, tax_code), headers=VIA_FASTAPI)
    assert fast.status_code == 201
    _same_answer(fast, slow)
    replayed_key = f"k-{uuid.uuid4().hex}"
    first = post(client, f"/v1/declarations/{fast.json()['number']}/registration", token, key=replayed_key)
    fast_replay = post(client, f"/v1/declarations/{fast.json()['number']}/registration", token, key=replayed_key)
    assert fast_replay.headers["idempotent-replayed"] == "true" and fast_replay.json() == first.json()
    number = slow.json()["number"]
    # the same read, once fast and once through FastAPI (a header sent twice is not the fast path's shape)
    fast_read = client.get(f"/v1/declarations/{number}", headers=bearer(token))
    slow_read = client.get(f"/v1/declarations/{number}",
                           headers=[("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")])
    assert fast_read.status_code == 200 and fast_read.content == slow_read.content
    _same_answer(fast_read, slow_read)
    assert answered() == {"declarations": 1, "registration": 2, "read": 1}


def test_refusals_raised_inside_a_fast_answer_are_the_apps(client, served, tariff, enterprises, answered):
    token = served.tokens.operator()
    for path in (f"/v1/declarations/{UNKNOWN}/registration", f"/v1/declarations/{UNKNOWN}/payments"):
        body = {"amount_vnd": 1} if path.endswith("payments") else None
        fast = post(client, path, token, body)
        refusal(fast, 404, "not_found", "number")
    refusal(client.get(f"/v1/declarations/{UNKNOWN}", headers=bearer(token)), 404, "not_found", "number")
    with not_taking_writes(served):
        stale = post(client, "/v1/declarations", token, payload(tariff, enterprises[52]))
    refusal(stale, 503, "stale_epoch")
    assert stale.headers["retry-after"]
    assert answered() == {"registration": 1, "payments": 1, "read": 1, "declarations": 1}


def test_requests_not_of_the_fast_shape_get_fastapis_refusals(client, served, tariff, enterprises, answered, rows):
    tax_code = enterprises[53]
    declarant, officer = served.tokens.declarant(tax_code), served.tokens.officer(
        served.db.officers_of("01CA", "01")[0])
    body = payload(tariff, tax_code)
    before = rows()
    refusal(post(client, "/v1/declarations", None, body), 401, "unauthorized")
    refusal(post(client, "/v1/declarations", "not-a-token", body), 401, "unauthorized")
    refusal(post(client, "/v1/declarations", officer, body), 403, "forbidden")
    refusal(post(client, "/v1/declarations", declarant, body, key=None), 400, "idempotency_key_required")
    refusal(post(client, "/v1/declarations", declarant, body, key="has spaces"), 400, "idempotency_key_invalid")
    refusal(post(client, "/v1/declarations", declarant, content=b"{", key="k-1",
                 headers={"Content-Type": "application/json"}), 400, "malformed_json")
    refusal(post(client, "/v1/declarations", declarant, {**body, "surprise": 1}), 422, "invalid_request")
    missing = {k: v for k, v in body.items() if k != "goods"}
    refusal(post(client, "/v1/declarations", declarant, missing), 422, "invalid_request", "goods")
    too_big = b"x" * (served.site.services.max_body_bytes + 1)
    refusal(post(client, "/v1/declarations/123456789012/registration", declarant, content=too_big), 413,
            "body_too_large")
    big_read = client.request("GET", "/v1/declarations/123456789012", headers=bearer(declarant), content=too_big)
    refusal(big_read, 413, "body_too_large", sentence=False)
    refusal(post(client, "/v1/declarations/12345/registration", declarant), 400, "number_invalid", "number")
    refusal(client.get("/v1/declarations/12345", headers=bearer(declarant)), 400, "number_invalid", "number")
    assert rows() == before
    assert answered() == {}
