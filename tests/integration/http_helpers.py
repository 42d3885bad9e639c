"""Helpers shared by the HTTP test modules: requests with tokens and keys, refusal checks, lane hunting."""
from __future__ import annotations

import contextlib
import random
import uuid

import httpx

from standby.domain.states import Kind
from standby.synthetic import make_declaration_payload

OFFICE = "01CA"
OTHER_OFFICE = "79CA"
IMPORT_SECTION = "01"
NEW_KEY = object()  # post(): make up a fresh Idempotency-Key
INTAKE_PATHS = ("/v1/declarations", "/v1/declarations/{number}/registration", "/v1/declarations/{number}/amendments",
                "/v1/declarations/{number}/payments", "/v1/declarations/{number}/decision",
                "/v1/declarations/{number}", "/v1/officers/me/queue")

_rng = random.Random(20250701)


def payload(tariff, tax_code: str, office: str = OFFICE, kind: Kind = Kind.IMPORT) -> dict:
    return make_declaration_payload(_rng, kind, tax_code, office, tariff)


@contextlib.contextmanager
def not_taking_writes(served):
    """The site hears of a newer epoch than its control row's (as from the witness after a failover elsewhere): its
    gate refuses writes with 503 stale_epoch and /readyz says not ready, until it is told otherwise."""
    services = served.site.services
    before = services._authority_epoch
    services._authority_epoch = 10**6
    try:
        yield
    finally:
        services._authority_epoch = before


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
