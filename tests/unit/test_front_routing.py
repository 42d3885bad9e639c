"""The front's pure decisions: which site, and whether to forward, hold, refuse or deliver, by method, status and
code (cutover/front/routing.py)."""
from __future__ import annotations

import json

import pytest

from cutover.front import routing
from cutover.front.routing import Action, Primary
from cutover.witness.contract import WitnessState

SITES = {"A": "http://127.0.0.1:8401", "B": "http://127.0.0.1:8402"}
A = Primary("A", SITES["A"], 1)
WRITES = ("POST", "PUT", "PATCH", "DELETE")
READS = ("GET", "HEAD", "OPTIONS")


def envelope(code: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": "a sentence", "field": None}}).encode()


# --- which site ------------------------------------------------------------------------------------------------------


def test_the_primary_is_the_site_the_witness_names_with_its_address_and_epoch():
    assert routing.primary_of(WitnessState(3, "B"), SITES) == Primary("B", SITES["B"], 3)


def test_no_primary_when_the_witness_names_none_or_was_never_initialised():
    assert routing.primary_of(WitnessState(0, None), SITES) is None
    assert routing.primary_of(None, SITES) is None


def test_a_primary_the_settings_do_not_know_is_no_primary_for_the_front():
    assert routing.primary_of(WitnessState(4, "C"), SITES) is None


# --- on arrival ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", WRITES + READS)
def test_every_request_is_forwarded_to_a_known_primary(method):
    decision = routing.route(method, A)
    assert decision.action is Action.FORWARD and decision.primary == A


@pytest.mark.parametrize("method", WRITES + ("post",))
def test_writes_are_held_while_no_primary_is_known(method):
    decision = routing.route(method, None)
    assert decision.action is Action.HOLD and decision.reason == "no_primary"


@pytest.mark.parametrize("method", READS)
def test_reads_are_never_held_they_are_refused_no_primary_with_retry_after(method):
    decision = routing.route(method, None)
    assert decision.action is Action.REFUSE
    assert decision.refusal.status == 503 and decision.refusal.code == "no_primary"
    assert decision.refusal.headers() == {"Retry-After": "1"}


# --- the site's answer -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(routing.HOLD_CODES))
@pytest.mark.parametrize("method", WRITES)
def test_a_write_answered_503_not_now_or_not_me_is_held(method, code):
    decision = routing.judge_answer(method, 503, code)
    assert decision.action is Action.HOLD and decision.reason == code


@pytest.mark.parametrize("code", ["not_primary", "fenced", "stale_epoch", "lease_expired"])
def test_not_me_answers_make_the_front_ask_the_witness_again_at_once(code):
    assert routing.judge_answer("POST", 503, code).repoll


@pytest.mark.parametrize("code", ["intake_frozen", "held_too_long", "hold_full", "intake_unavailable"])
def test_not_now_answers_wait_for_the_regular_poll(code):
    assert not routing.judge_answer("POST", 503, code).repoll


@pytest.mark.parametrize("code", sorted(routing.HOLD_CODES))
@pytest.mark.parametrize("method", READS)
def test_a_read_answered_503_is_delivered_never_held(method, code):
    assert routing.judge_answer(method, 503, code).action is Action.DELIVER


@pytest.mark.parametrize("status,code", [(503, "site_uninitialised"), (503, None), (500, "not_primary"),
                                         (409, "stale_epoch"), (422, "invalid_request"), (401, "unauthorized"),
                                         (201, None), (200, None)])
def test_other_answers_to_writes_are_delivered_as_they_are(status, code):
    assert routing.judge_answer("POST", status, code).action is Action.DELIVER


# --- broken connections ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", WRITES)
def test_a_write_whose_connection_broke_is_held_and_the_witness_asked_again(method):
    decision = routing.judge_connection_error(method, A, read_retried=False)
    assert decision.action is Action.HOLD and decision.reason == routing.CONNECTION_LOST and decision.repoll


def test_a_read_whose_connection_broke_is_sent_once_more_then_refused():
    again = routing.judge_connection_error("GET", A, read_retried=False)
    assert again.action is Action.FORWARD and again.repoll
    refused = routing.judge_connection_error("GET", A, read_retried=True)
    assert refused.action is Action.REFUSE and refused.refusal.code == "primary_unreachable"
    assert refused.refusal.envelope()["error"]["primary_site"] == "A"


# --- bounds ----------------------------------------------------------------------------------------------------------


def test_the_hold_admits_up_to_its_count_bound_then_refuses_front_hold_full():
    assert routing.admit_hold(4, 5) is None
    full = routing.admit_hold(5, 5)
    assert full.status == 503 and full.code == "front_hold_full" and full.headers()["Retry-After"]


def test_time_left_to_hold_counts_from_arrival_and_never_goes_below_zero():
    assert routing.hold_left(now=103.0, arrived_at=100.0, hold_max_s=10) == 7.0
    assert routing.hold_left(now=110.0, arrived_at=100.0, hold_max_s=10) == 0.0
    assert routing.hold_left(now=200.0, arrived_at=100.0, hold_max_s=10) == 0.0


def test_held_too_long_is_a_503_with_retry_after_naming_the_bound_and_the_last_reason():
    refusal = routing.held_too_long(10, "intake_frozen")
    body = refusal.envelope()["error"]
    assert refusal.status == 503 and refusal.headers() == {"Retry-After": "1"}
    assert body["code"] == "front_held_too_long" and "10 s" in body["message"] and "intake_frozen" in body["message"]


def test_a_forward_past_its_timeout_is_a_504():
    refusal = routing.forward_timeout(A, 30)
    assert refusal.status == 504 and refusal.code == "front_forward_timeout" and "Retry-After" in refusal.headers()


# --- when held writes may go: the primary's /readyz -------------------------------------------------------------------


@pytest.mark.parametrize("body,ready", [({"ready": True, "epoch": 1}, True), ({"ready": True, "epoch": 2}, True),
                                        ({"ready": True, "epoch": 0}, False), ({"ready": False, "epoch": 1}, False),
                                        ({"ready": True}, False), ({}, False), ({"ready": "yes", "epoch": 1}, False)])
def test_held_writes_go_when_the_primary_is_ready_under_an_epoch_not_older_than_the_witness(body, ready):
    assert routing.ready_for_writes(body, A) is ready


# --- reading the site's envelope -------------------------------------------------------------------------------------


def test_the_code_is_read_from_the_sites_error_envelope():
    assert routing.error_code(envelope("intake_frozen"), "application/json") == "intake_frozen"


@pytest.mark.parametrize("body,content_type", [(b"", "application/json"), (b"not json", "application/json"),
                                               (b'{"number": "1"}', "application/json"),
                                               (b'{"error": "plain"}', "application/json"),
                                               (b'{"error": {"code": 5}}', "application/json"),
                                               (envelope("not_primary"), "text/plain"), (envelope("x"), None),
                                               (b"[1, 2]", "application/json")])
def test_anything_but_an_error_envelope_has_no_code(body, content_type):
    assert routing.error_code(body, content_type) is None


@pytest.mark.parametrize("status,cls", [(200, "2xx"), (201, "2xx"), (404, "4xx"), (503, "5xx")])
def test_status_class(status, cls):
    assert routing.status_class(status) == cls


# --- who is primary: the witness watch (polled by hand here; the front polls it in a thread) --------------------------


def test_the_watch_announces_a_new_primary_or_epoch_once_and_keeps_the_last_state_while_the_witness_is_down():
    from cutover.front.watch import PrimaryWatch
    from cutover.witness.contract import WitnessUnavailable

    answers = [WitnessState(1, "A"), WitnessState(1, "A"), WitnessUnavailable("locked"), WitnessState(2, "B")]
    announced, errors = [], []

    def lookup() -> WitnessState:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    watch = PrimaryWatch(lookup, 0.05, announced.append, lambda: errors.append(1))
    assert watch.poll() == WitnessState(1, "A")
    assert watch.poll() == WitnessState(1, "A")  # unchanged: not announced again
    assert watch.poll() == WitnessState(1, "A") and watch.failing and errors == [1]  # down: the last state stands
    assert watch.poll() == WitnessState(2, "B") and not watch.failing
    assert announced == [WitnessState(1, "A"), WitnessState(2, "B")]
