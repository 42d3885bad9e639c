"""A batch and its answers as they cross to a ClearanceWorker and back: bytes that decode to equal values."""
from standby.clearance.commands import (Command, Op, Outcome, Principal, Role, decode_commands, decode_outcomes,
                                        encode_commands, encode_outcomes, refused)

DECLARANT = Principal(Role.DECLARANT, "0100118911")
GOODS = [{"hs_code": "85171200", "quantity": "3", "unit": "PCE", "customs_value": "1250.50", "currency": "USD"}]


def test_a_batch_of_commands_comes_back_equal_with_its_fingerprints_kept():
    batch = [Command(Op.PRE_DECLARE, DECLARANT, "k1", {"kind": "import", "office_code": "01CA", "goods": GOODS},
                     "01CA"),
             Command(Op.REGISTER, DECLARANT, "k2", {"number": "101234567890"}, "01CA"),
             Command(Op.DECIDE, Principal(Role.OFFICER, "01CA-01-01"), "k3",
                     {"number": "101234567890", "decision": "approve", "note": None}, "01CA")]

    decoded = decode_commands(encode_commands(batch))

    assert decoded == batch
    assert [c.request_hash for c in decoded] == [c.request_hash for c in batch]
    assert decoded[0].op is Op.PRE_DECLARE and decoded[2].principal.role is Role.OFFICER


def test_a_command_whose_fingerprint_was_given_keeps_it_rather_than_recomputing():
    # the stored fingerprint is what an idempotency replay is compared against: the wire must not change it
    given = Command(Op.PAY, DECLARANT, "k", {"number": "101234567890", "amount_vnd": 5}, "01CA", request_hash="f" * 64)

    assert decode_commands(encode_commands([given]))[0].request_hash == "f" * 64


def test_outcomes_come_back_equal_accepted_replayed_and_refused():
    outcomes = [Outcome(201, {"number": "101234567890", "lane": "green", "goods": [{"line": 1}]}, False, "green"),
                Outcome(200, {"number": "101234567890"}, replayed=True),
                refused(409, "idempotency_key_reused", "the key was used with another body", "Idempotency-Key")]

    assert decode_outcomes(encode_outcomes(outcomes)) == outcomes


def test_an_empty_batch_is_an_empty_list_both_ways():
    assert decode_commands(encode_commands([])) == [] and decode_outcomes(encode_outcomes([])) == []


def test_text_that_utf8_cannot_carry_crosses_unchanged_both_ways():
    # JSON carries a lone surrogate ("\ud800"), msgpack's UTF-8 cannot: the request must reach the worker as it came
    # (to be refused there for its meaning, or stored), not fail in the HTTP process as a 503
    odd = [Command(Op.AMEND, DECLARANT, "k", {"number": "101234567890", "goods": [{"hs_code": "\ud800"}]}, "01CA")]
    answer = [refused(422, "hs_code_unknown", "no HS code '\ud800' in the tariff", "goods[0].hs_code")]

    assert decode_commands(encode_commands(odd)) == odd
    assert decode_outcomes(encode_outcomes(answer)) == answer
