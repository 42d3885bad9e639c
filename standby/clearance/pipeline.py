"""The clearance pipeline: a batch of commands carried out in one database transaction.

Used in-process by tests and the no-Ray benchmark, and inside each Ray `ClearanceWorker`.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from standby.clearance.batch import BatchWrites
from standby.clearance.commands import Command, Op, Outcome, refused
from standby.clearance.handlers import HANDLERS, HandlerContext
from standby.clearance.numbers import NumberAllocator
from standby.clearance.reference_cache import ReferenceCache
from standby.domain.errors import DomainError
from standby.domain.risk import RiskRules
from standby.domain.tariff import Tariff
from standby.store.engine import is_sqlite
from standby.intake_gate import HOLD_CODE, REFUSAL_CODES, GateDecision, decide
from standby.store.schema import idempotency_keys
from standby.store.site import lock_control_for_batch

# Both IN lists on the primary key (principal, key): SQLite and PostgreSQL search the index for each pair of the
# cross product; a pair no command asked for is dropped after reading. Built once (see standby.clearance.batch). A
# batch is probed STORED_PROBE_CHUNK commands at a time, in (principal, key) order, so a probe searches at most
# 16 x 16 pairs however large the batch. Measured on SQLite with 300,000 stored keys (one transaction, 16 to 500
# commands): 0.2 ms for 16 commands, 6 ms for 500, against 1.0 and 66 ms for a statement built per batch with an OR
# of (principal = ? AND key IN ...) per principal, which compiling each new shape made the dearer (16% of a
# ClearanceWorker's samples at 16x design).
STORED_PROBE_CHUNK = 16
_STORED_ANSWERS = select(idempotency_keys).where(
    idempotency_keys.c.principal.in_(bindparam("principals", expanding=True)),
    idempotency_keys.c.key.in_(bindparam("keys", expanding=True)))

log = logging.getLogger(__name__)

BY_NUMBER = (Op.REGISTER, Op.AMEND, Op.PAY, Op.DECIDE)


class StoreUnavailable(Exception):
    """The database stayed unreachable or locked through every retry; nothing of the batch was written."""


class _LeaseRanOut(Exception):
    """The site's lease deadline passed while a batch ran: raised before its commit so the batch rolls back."""

    def __init__(self, gate: GateDecision):
        super().__init__(gate.message)
        self.gate = gate


class ClearancePipeline:
    """Carries out commands in one transaction per batch.

    Contract: `process` returns one Outcome per command, in order. Accepted commands commit together with their
    idempotency records; a refused command writes nothing but its idempotency record; a command whose
    (principal, idempotency key) was seen before returns the stored first answer and writes nothing. If the intake
    gate does not admit (`standby.intake_gate.decide` on the control row read in the transaction), every command is
    answered with the gate's code and nothing is written; a frozen site's answer satisfies `is_hold`. The gate is
    asked at `clock()` when the transaction starts and again right before it commits: a batch never commits at or
    after the site's lease deadline (`lease_until`); one that would is rolled back whole and every command answered
    `lease_expired` (nothing written, not even idempotency records). Transient store errors are retried; if they
    persist, StoreUnavailable is raised and nothing was written."""

    def __init__(self, engine: Engine, site_id: str, site_digit: int, tariff: Tariff, rules: RiskRules,
                 block_size: int = 1000, clock: Callable[[], float] = time.time, retry_attempts: int = 5):
        self.engine, self.site_id, self.tariff, self.rules, self.clock = engine, site_id, tariff, rules, clock
        self.numbers = NumberAllocator(site_digit, block_size)
        self.reference = ReferenceCache(engine, clock)
        self._attempts = retry_attempts

    def process(self, commands: Sequence[Command]) -> list[Outcome]:
        if not commands:
            return []
        try:
            return self._with_retries(commands)
        except StoreUnavailable:
            raise
        except _LeaseRanOut as ran_out:
            return [gate_outcome(ran_out.gate)] * len(commands)
        except DBAPIError as exc:
            if len(commands) == 1:
                log.error("store refused command %s: %s", commands[0].op.value, exc.orig)
                return [refused(503, "store_error", f"the database refused this {commands[0].op.value}: "
                                f"{type(exc.orig).__name__}; nothing was written")]
            # One bad command must not sink its batch-mates: carry each out alone.
            return [outcome for cmd in commands for outcome in self.process([cmd])]

    def _with_retries(self, commands: Sequence[Command]) -> list[Outcome]:
        retrying = Retrying(
            retry=retry_if_exception_type(OperationalError), stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.05, max=1.0), reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self.reference.refresh()  # opens its own connection: never inside the batch's transaction
                    try:
                        with self.engine.begin() as conn:
                            return self._in_transaction(conn, commands)
                    except BaseException:
                        self.numbers.forget()  # the block's reservation rolled back with the batch
                        raise
        except OperationalError as exc:
            raise StoreUnavailable(f"database unavailable after {self._attempts} attempts: {exc.orig}") from exc
        raise AssertionError("unreachable")

    def _in_transaction(self, conn: Connection, commands: Sequence[Command]) -> list[Outcome]:
        now = self.clock()
        # First statement of the transaction: on PostgreSQL the row is taken FOR SHARE until commit, so a freeze
        # waits for this batch and no batch that read "open" commits after the freeze (see store.site.freeze).
        control = lock_control_for_batch(conn, self.site_id)
        gate = decide(self.site_id, control, now=now)
        if not gate.admitted:
            return [gate_outcome(gate)] * len(commands)
        self.numbers.reserve(conn, sum(1 for c in commands if c.op is Op.PRE_DECLARE))
        stored = self._stored_answers(conn, commands)
        writes = BatchWrites()
        writes.load(
            conn,
            bases=[c.payload.get("number", "")[:11] for c in commands if c.op in BY_NUMBER],
            tax_codes=[c.payload.get("enterprise_tax_code", "") for c in commands if c.op is Op.PRE_DECLARE],
            lock=not is_sqlite(self.engine),
        )
        ctx = HandlerContext(conn=conn, writes=writes, tariff=self.tariff, rules=self.rules,
                             offices=self.reference.offices(), officers=self.reference.officers,
                             next_number=self.numbers.next, site_id=self.site_id, epoch=control.epoch, now=now)
        outcomes = []
        for cmd in commands:
            outcomes.append(self._one(ctx, cmd, stored))
        writes.flush(conn)
        # Last thing before the commit: the lease may have run out while the handlers ran. The row read above is
        # still this transaction's (held FOR SHARE on PostgreSQL, under the write lock on SQLite), so only the
        # clock has moved; fence_margin_s covers the commit itself.
        last_look = decide(self.site_id, control, now=self.clock())
        if not last_look.admitted:
            raise _LeaseRanOut(last_look)
        return outcomes

    def _one(self, ctx: HandlerContext, cmd: Command, stored: dict) -> Outcome:
        key = (cmd.principal.key, cmd.idempotency_key)
        if key in stored:
            request_hash, outcome = stored[key]
            if request_hash != cmd.request_hash:
                return refused(422, "idempotency_key_reused",
                               f"Idempotency-Key {cmd.idempotency_key!r} was used before with a different request")
            return Outcome(outcome.status, outcome.body, replayed=True, lane=outcome.lane)
        try:
            outcome = HANDLERS[cmd.op](ctx, cmd)
        except DomainError as err:
            outcome = Outcome(err.refusal.status, err.refusal.envelope())
        stored[key] = (cmd.request_hash, outcome)
        ctx.writes.idempotency.append({
            "principal": key[0], "key": key[1], "request_hash": cmd.request_hash, "status": outcome.status,
            "response": json.dumps(outcome.body, separators=(",", ":")), "created_at": ctx.now,
        })
        return outcome

    def _stored_answers(self, conn: Connection, commands: Sequence[Command]) -> dict:
        wanted = {(c.principal.key, c.idempotency_key) for c in commands}
        pairs = sorted(wanted)
        rows = []
        for start in range(0, len(pairs), STORED_PROBE_CHUNK):
            chunk = pairs[start:start + STORED_PROBE_CHUNK]
            rows += conn.execute(_STORED_ANSWERS, {"principals": sorted({p for p, _ in chunk}),
                                                   "keys": sorted({k for _, k in chunk})}).mappings()
        answers = {}
        for row in rows:
            if (row["principal"], row["key"]) not in wanted:  # another principal's key of the same name
                continue
            body = json.loads(row["response"])
            answers[(row["principal"], row["key"])] = (row["request_hash"], Outcome(row["status"], body,
                                                                                    lane=body.get("lane")))
        return answers


def gate_outcome(gate: GateDecision) -> Outcome:
    """The answer to a command the gate did not admit. A HOLD keeps its code (`intake_gate.HOLD_CODE`), so the API
    recognises it with `is_hold` and holds the command rather than answering. Nothing was written for it, not even
    its idempotency record, so resubmitting the same command later is safe."""
    return refused(gate.status, gate.code, gate.message)


def is_gate_refusal(outcome: Outcome) -> bool:
    """Whether a worker's answer is the gate's refusal (not primary, fenced, no control row): nothing was written."""
    return outcome.status == 503 and outcome.body.get("error", {}).get("code") in REFUSAL_CODES


def is_hold(outcome: Outcome) -> bool:
    """Whether a worker's answer is the gate's HOLD (intake was frozen inside the batch's transaction)."""
    return outcome.status == 503 and outcome.body.get("error", {}).get("code") == HOLD_CODE
