"""The published contract of the site's HTTP API, declared once: the error body, the shapes of the path and header
parameters (which the server enforces as published), and every status each operation can answer with.

Contract: `answers(operation)` is the `responses=` of the route named `operation` (its function name); every status
an operation can answer, success aside, is in OPERATIONS, each with the error codes it carries. `parameter_refusal`
turns a parameter that does not match its published shape into the project's refusal (status, code, sentence), so a
wrong-shaped number is a 400 `number_invalid`, never FastAPI's own body. `published(app)` is the OpenAPI document:
FastAPI's, less the 422 bodies FastAPI adds on its own (validation errors are answered with ErrorBody, and only
where OPERATIONS says a 422 can come)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import FastAPI, Header, Path
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from standby.api.models import TAX_CODE
from standby.domain.errors import DomainError, Refusal
from standby.domain.numbers import DeclarationNumber
from standby.domain.states import DeclarationState

# ASCII digits only: a JSON Schema pattern is an ECMA-262 regex, where \d is ASCII, but pydantic's and Python's \d
# are Unicode, and DeclarationNumber.parse accepts ASCII only.
NUMBER_PATTERN = r"^[1-9][0-9]{11}$"
KEY_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
BEARER = HTTPBearer(auto_error=False, description="a token issued by `standbyctl tokens issue` (declarant, officer "
                                                  "or operator)")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(description="machine-readable reason, e.g. not_found, not_primary, intake_unavailable")
    message: str = Field(description="a sentence for a person, naming what is wrong")
    field: str | SkipJsonSchema[None] = Field(None, description="the request field at fault, e.g. goods[2].hs_code")
    primary_site: str | SkipJsonSchema[None] = Field(None, description="a 503 of a site that does not take writes: "
                                                                        "the site that does")
    primary_url: str | None = Field(None, description="that site's base URL, when this site knows it")


class ErrorBody(BaseModel):
    """Every refusal: {"error": {"code", "message", "field"?}}."""
    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    site: str


class SiteState(BaseModel):
    """The site's control row; all null before `standbyctl db upgrade` wrote one."""
    site: str
    role: str | None = Field(description="primary or standby")
    epoch: int | None
    intake_state: str | None = Field(description="open, frozen or fenced")
    primary_site: str | None = None


class Readiness(SiteState):
    ready: bool
    code: str | SkipJsonSchema[None] = Field(None, description="when not ready: the intake gate's reason")


# --- parameters ------------------------------------------------------------------------------------------------------

Number = Annotated[str, Path(pattern=NUMBER_PATTERN, description="12-digit declaration number: site digit, "
                                                                 "10-digit sequence, amendment count",
                             examples=["100000000120"])]
TaxCode = Annotated[str, Path(pattern=TAX_CODE, description="10-digit tax code, or 13 for a branch",
                              examples=["0100000001"])]
IdempotencyKey = Annotated[str, Header(alias="Idempotency-Key", pattern=KEY_PATTERN,
                                       description="the client's name for this write: a retry with the same key and "
                                                   "request gets the first answer; it is never carried out twice")]
STATE_ENUM = {"enum": [s.value for s in DeclarationState]}  # documented; the route refuses others (state_unknown)


def parameter_refusal(location: str, name: str, value: object) -> Refusal | None:
    """The refusal of a path or header parameter that failed its published shape (missing, or not matching), or None
    for other parameters (their errors are FastAPI's validation errors: 422 invalid_request)."""
    if (location, name) == ("path", "number"):
        try:
            DeclarationNumber.parse(str(value))
        except DomainError as err:
            return err.refusal
        return Refusal("number_invalid", f"number must be a 12-digit declaration number, got {value!r}", "number",
                       400)
    if (location, name) == ("path", "tax_code"):
        return Refusal("tax_code_invalid", f"tax_code must be a 10-digit tax code, or 13 for a branch, got {value!r}",
                       "tax_code", 400)
    if location == "header" and name.lower() == "idempotency-key":
        if value is None:
            return Refusal("idempotency_key_required", "send an Idempotency-Key header so a retried request is "
                                                       "answered once, never twice", None, 400)
        return Refusal("idempotency_key_invalid", "Idempotency-Key must be 1-128 characters of letters, digits and "
                                                  ". _ : -", None, 400)
    return None


# --- answers ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    """A status an operation can answer with: the error codes it carries, when, and the headers sent with it."""
    status: int
    codes: tuple[str, ...]
    when: str
    headers: tuple[str, ...] = ()


RETRY_AFTER = "Retry-After"
HEADERS = {RETRY_AFTER: {"description": "seconds to wait before retrying (the same Idempotency-Key for a write)",
                         "schema": {"type": "string"}},
           "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}

TOO_LARGE = Answer(413, ("body_too_large",), "the request's body is over the site's limit (limits.max_body_bytes)")
INTERNAL = Answer(500, ("internal_error",), "the site failed on this request: a fault of the site, logged with its "
                                            "cause")
UNAUTHORIZED = Answer(401, ("unauthorized",), "no 'Authorization: Bearer <token>', or a token this site does not "
                                              "know", ("WWW-Authenticate",))
ROLE = Answer(403, ("forbidden",), "the token's role may not use this operation")
NOT_YOURS = Answer(403, ("forbidden",), "a declarant token of another enterprise, or an officer of another office")
NOT_ASSIGNED = Answer(403, ("not_assigned",), "the declaration is assigned to another officer")
KEY = Answer(400, ("idempotency_key_required", "idempotency_key_invalid"),
             "no Idempotency-Key header, or one that is not 1-128 letters, digits and . _ : -")
MALFORMED = Answer(400, ("malformed_json",), "the body is not valid JSON in UTF-8")
NUMBER = Answer(400, ("number_invalid",), "the number is not 12 ASCII digits with a first digit of 1-9")
NO_SUCH_NUMBER = Answer(404, ("not_found",), "no declaration with this number at this site")
BODY = Answer(422, ("invalid_request", "body_missing"), "the body does not match its schema (the message names up "
                                                       "to five problems, `field` the first)")
REUSED = Answer(422, ("idempotency_key_reused",), "the Idempotency-Key was used before with a different request")
STORE_DOWN = Answer(503, ("store_unavailable",), "the site's database did not answer", (RETRY_AFTER,))
NOT_TAKING_WRITES = Answer(
    503, ("site_uninitialised", "fenced", "not_primary", "stale_epoch", "lease_expired", "held_too_long", "hold_full",
          "intake_unavailable", "site_unavailable", "store_error", "store_unavailable", "sync_standby_unavailable"),
    "the site does not take this write now: it is a standby or fenced (`primary_site` and `primary_url` name the "
    "primary), its lease ran out, a freeze held the write past its bounds, its workers or database are unavailable, "
    "or a synchronous standby has not applied it; nothing was written unless the message says so, and a retry with "
    "the same Idempotency-Key is safe", (RETRY_AFTER,))
GOODS_CODES = ("goods_missing", "too_many_lines", "goods_line_invalid", "hs_code_invalid", "description_invalid",
               "quantity_invalid", "value_invalid", "unit_invalid", "currency_unknown", "origin_invalid")
ILLEGAL = ("illegal_transition", "number_superseded")
_WRITE = (UNAUTHORIZED, ROLE, KEY, TOO_LARGE, REUSED, NOT_TAKING_WRITES, INTERNAL)
_BY_NUMBER = (*_WRITE, NUMBER, NO_SUCH_NUMBER)
_READ = (UNAUTHORIZED, TOO_LARGE, STORE_DOWN, INTERNAL)

OPERATIONS: dict[str, tuple[Answer, ...]] = {
    "pre_declare": (*_WRITE, NOT_YOURS, MALFORMED, BODY,
                    Answer(422, ("enterprise_unknown", "office_unknown", *GOODS_CODES),
                           "an enterprise or office this site does not know, or goods lines the tariff refuses")),
    "register": (*_BY_NUMBER, NOT_YOURS, Answer(409, ("already_registered", *ILLEGAL), "not pre_declared, or not "
                                                                                       "the current number"),
                 Answer(422, ("enterprise_blocked",), "the enterprise may not register declarations (suspended, "
                                                      "or tax debt overdue)")),
    "amend": (*_BY_NUMBER, NOT_YOURS, MALFORMED, BODY,
              Answer(409, ("amend_after_payment", "amendment_limit", *ILLEGAL), "paid, amended nine times, or not "
                                                                                "amendable in its state"),
              Answer(422, GOODS_CODES, "goods lines the tariff refuses")),
    "pay": (*_BY_NUMBER, NOT_YOURS, MALFORMED, BODY, Answer(409, ("not_payable", *ILLEGAL), "not awaiting payment"),
            Answer(422, ("amount_mismatch",), "the amount is not the outstanding duty and VAT")),
    "decide": (*_BY_NUMBER, NOT_ASSIGNED, MALFORMED, BODY, Answer(409, ILLEGAL, "not awaiting an officer's "
                                                                                "decision")),
    "get_declaration": (*_READ, NUMBER, NOT_YOURS, NO_SUCH_NUMBER),
    "get_enterprise": (*_READ, NOT_YOURS, Answer(400, ("tax_code_invalid",), "the tax code is not 10 or 13 digits"),
                       Answer(404, ("not_found",), "no enterprise with this tax code at this site")),
    "list_by_unit": (*_READ, ROLE, Answer(404, ("unit_unknown",), "no province or ward with this code"),
                     Answer(422, ("unit_required", "state_unknown", "map_unknown", "invalid_request"),
                            "not exactly one of province and ward, or a state, map or limit this site does not "
                            "know")),
    "queue": (*_READ, ROLE, Answer(422, ("invalid_request",), "limit is not an integer")),
    "site": (UNAUTHORIZED, TOO_LARGE, INTERNAL,
             Answer(503, ("site_unavailable",), "the site cannot read its control row", (RETRY_AFTER,))),
    "healthz": (TOO_LARGE, INTERNAL),
    "readyz": (TOO_LARGE, INTERNAL),
}

READYZ_503 = {"description": "not ready for writes (the body says why, `code` the gate's reason), or the control row "
                             "cannot be read (site_unavailable, as ErrorBody)",
              "content": {"application/json": {"schema": {"anyOf": [{"$ref": "#/components/schemas/Readiness"},
                                                                     {"$ref": "#/components/schemas/ErrorBody"}]}}}}


def answers(operation: str) -> dict[int, dict]:
    """The `responses=` of `operation`: each status once, its codes and reasons merged, with ErrorBody."""
    merged: dict[int, list[Answer]] = {}
    for answer in OPERATIONS[operation]:
        merged.setdefault(answer.status, []).append(answer)
    out: dict[int, dict] = {}
    for status, group in sorted(merged.items()):
        codes = list(dict.fromkeys(code for a in group for code in a.codes))
        headers = {name: HEADERS[name] for a in group for name in a.headers}
        out[status] = {"model": ErrorBody, "description": "; or ".join(a.when for a in group) +
                       f". Codes: {', '.join(codes)}.", **({"headers": headers} if headers else {})}
    if operation == "readyz":
        out[503] = READYZ_503
    return out


def published(app: FastAPI) -> dict:
    """The app's OpenAPI document (cached on the app as FastAPI's is), less the 422 bodies FastAPI adds on its own
    (HTTPValidationError) to operations that never answer them."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for operations in doc["paths"].values():
        for operation in operations.values():
            added = operation["responses"].get("422", {}).get("content", {}).get("application/json", {})
            if added.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                del operation["responses"]["422"]
    schemas = doc.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    app.openapi_schema = doc
    return doc
