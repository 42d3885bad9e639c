"""The front's decisions, pure: where a request goes, whether a site's answer is delivered or the request held and
sent again, and what a client is told when the front gives up. No I/O, no clock: callers pass what they saw.

Rules (DESIGN §3 "The front"):
- Writes (POST, PUT, PATCH, DELETE) go to the primary the witness names; with none named they are held.
- A write answered 503 with a "not now / not me" code (HOLD_CODES), or lost to a broken connection, is held and
  sent again with the same headers and body: safe, because every write carries its Idempotency-Key.
- Reads are never held: forwarded to the primary, or refused at once (503 no_primary) when none is known. A read
  whose connection broke is sent once more, at once, to whichever primary the witness names then.
- A held write past its time bound gets 503 front_held_too_long; one that finds the hold full, front_hold_full.
  Every refusal of the front carries Retry-After.
- The witness is the one authority on the primary. A site's "not me" answer may name the primary (primary_site,
  primary_url); the front does not route by it, it asks the witness again at once (REPOLL_CODES).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from cutover.witness.contract import WitnessState

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A site answers 503 with one of these when it cannot take the write now but a later attempt (on it or on a new
# primary) can: the intake is frozen for a cutover, the site is not (or no longer) the primary, it could not renew
# its lease in the witness (lease_expired: it fenced itself, a failover may follow), or the site's own hold gave
# up. Any other answer, 503s included, is the client's to see.
HOLD_CODES = frozenset({"intake_frozen", "not_primary", "fenced", "stale_epoch", "lease_expired", "held_too_long",
                        "hold_full", "intake_unavailable"})
# Codes that say the witness may have moved on: ask it again at once rather than at the next poll.
REPOLL_CODES = frozenset({"not_primary", "fenced", "stale_epoch", "lease_expired"})
FRONT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # the front answers these itself
RETRY_AFTER_S = 1
CONNECTION_LOST = "connection_lost"  # the reason a write is held when its connection to the primary broke


def is_write(method: str) -> bool:
    return method.upper() in WRITE_METHODS


@dataclass(frozen=True)
class Primary:
    """The site the witness names, where to reach it, and under which epoch."""

    site: str
    url: str
    epoch: int


def primary_of(state: WitnessState | None, site_urls: Mapping[str, str]) -> Primary | None:
    """The primary a witness state names, or None when it names none or a site these settings do not know (the
    front cannot reach a site it has no address for, so that is the same as no primary for it)."""
    if state is None or state.primary_site is None:
        return None
    url = site_urls.get(state.primary_site)
    return Primary(state.primary_site, url, state.epoch) if url else None


class Action(str, Enum):
    FORWARD = "forward"
    HOLD = "hold"
    REFUSE = "refuse"
    DELIVER = "deliver"


@dataclass(frozen=True)
class Refusal:
    """An answer of the front itself: 503 (or 504) with the site's error envelope and Retry-After."""

    code: str
    message: str
    status: int = 503
    retry_after_s: int = RETRY_AFTER_S
    primary_site: str | None = None

    def envelope(self) -> dict:
        error = {"code": self.code, "message": self.message}
        if self.primary_site:
            error["primary_site"] = self.primary_site
        return {"error": error}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


@dataclass(frozen=True)
class Decision:
    action: Action
    primary: Primary | None = None
    reason: str | None = None  # why a request is held (a site's code, no_primary, connection_lost)
    refusal: Refusal | None = None
    repoll: bool = False  # ask the witness again at once


def no_primary() -> Refusal:
    return Refusal("no_primary", "no site is primary right now (a switchover or failover is under way); "
                                 "retry after the number of seconds in Retry-After")


def held_too_long(hold_max_s: float, last_reason: str | None) -> Refusal:
    why = f" (last seen: {last_reason})" if last_reason else ""
    return Refusal("front_held_too_long", f"the front held this write for its bound of {hold_max_s:g} s and no "
                                          f"primary took it{why}; retry with the same Idempotency-Key")


def hold_full(hold_max_requests: int) -> Refusal:
    return Refusal("front_hold_full", f"the front already holds {hold_max_requests} writes, its bound; retry with "
                                      "the same Idempotency-Key")


# A read refused for one of these goes to another site that answers (a standby serves reads) before it is refused.
READ_ELSEWHERE_CODES = frozenset({"primary_unreachable", "no_primary"})


def primary_unreachable(primary: Primary | None) -> Refusal:
    where = f"site {primary.site}" if primary else "the primary"
    return Refusal("primary_unreachable", f"{where} could not be reached; retry after the number of seconds in "
                                          "Retry-After", primary_site=primary.site if primary else None)


def forward_timeout(primary: Primary, timeout_s: float) -> Refusal:
    return Refusal("front_forward_timeout", f"site {primary.site} did not answer within {timeout_s:g} s; a write "
                                            "may be retried with the same Idempotency-Key", status=504,
                   primary_site=primary.site)


def route(method: str, primary: Primary | None) -> Decision:
    """Where a request goes on arrival: FORWARD to the primary; with none known, HOLD a write, REFUSE a read."""
    if primary is not None:
        return Decision(Action.FORWARD, primary)
    if is_write(method):
        return Decision(Action.HOLD, reason="no_primary")  # the regular poll will see a primary named
    return Decision(Action.REFUSE, refusal=no_primary())


def judge_answer(method: str, status: int, error_code: str | None) -> Decision:
    """What to do with a site's answer: DELIVER it, or HOLD a write the site could not take now (HOLD_CODES)."""
    if is_write(method) and status == 503 and error_code in HOLD_CODES:
        return Decision(Action.HOLD, reason=error_code, repoll=error_code in REPOLL_CODES)
    return Decision(Action.DELIVER)


def judge_connection_error(method: str, primary: Primary, read_retried: bool) -> Decision:
    """A forward that never got an answer (refused, reset, closed mid-request). A write is held and sent again
    (its Idempotency-Key makes that safe); a read is sent once more at once, then refused."""
    if is_write(method):
        return Decision(Action.HOLD, reason=CONNECTION_LOST, repoll=True)
    if not read_retried:
        return Decision(Action.FORWARD, repoll=True)
    return Decision(Action.REFUSE, refusal=primary_unreachable(primary), repoll=True)


def admit_hold(held_now: int, hold_max_requests: int) -> Refusal | None:
    """None when one more write may be held; the front_hold_full refusal when the hold is at its bound."""
    return hold_full(hold_max_requests) if held_now >= hold_max_requests else None


def hold_left(now: float, arrived_at: float, hold_max_s: float) -> float:
    """Seconds a write that reached the front at `arrived_at` may still be held (0 when its bound has passed)."""
    return max(0.0, arrived_at + hold_max_s - now)


def ready_for_writes(readyz: dict, primary: Primary) -> bool:
    """Whether the primary's /readyz body says it takes writes now: ready, and promoted under an epoch not older
    than the one the witness names (a site left behind at an older epoch says ready but refuses every write)."""
    epoch = readyz.get("epoch")
    return readyz.get("ready") is True and isinstance(epoch, int) and epoch >= primary.epoch


def error_code(body: bytes, content_type: str | None) -> str | None:
    """The code of the site's error envelope {"error": {"code", ...}}, or None for any other body."""
    if not body or not content_type or "json" not in content_type or not body.startswith(b"{"):
        return None
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def status_class(status: int) -> str:
    return f"{status // 100}xx"
