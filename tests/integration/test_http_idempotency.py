"""Idempotency over real HTTP: a retried request is answered once, never twice."""
from __future__ import annotations

import uuid

import pytest

from tests.integration.http_helpers import payload, post, refusal

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
