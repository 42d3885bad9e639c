"""The clearance pipeline: a batch of commands carried out in one database transaction.

Used in-process by tests and the no-Ray benchmark, and inside each Ray `ClearanceWorker`.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy import Connection, Engine, and_, or_, select
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from standby.clearance.batch import BatchWrites
from standby.clearance.commands import Command, Op, Outcome, refused
from standby.clearance.handlers import HANDLERS, HandlerContext
from standby.clearance.numbers import NumberAllocator
from standby.clearance.reference_cache import ReferenceCache
from standby.domain.errors import DomainError
from standby.domain.risk import RiskRules
from standby.domain.states import IntakeState, SiteRole
from standby.domain.tariff import Tariff
from standby.store.engine import is_sqlite
from standby.store.schema import idempotency_keys, site_control

log = logging.getLogger(__name__)

BY_NUMBER = (Op.REGISTER, Op.AMEND, Op.PAY, Op.DECIDE)


class StoreUnavailable(Exception):
    """The database stayed unreachable or locked through every retry; nothing of the batch was written."""


class ClearancePipeline:
    """Carries out commands in one transaction per batch.

    Contract: `process` returns one Outcome per command, in order. Accepted commands commit together with their
    idempotency records; a refused command writes nothing but its idempotency record; a command whose
    (principal, idempotency key) was seen before returns the stored first answer and writes nothing. If the site is
    not an open primary every command is refused. Transient store errors are retried; if they persist,
    StoreUnavailable is raised and nothing was written."""

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
        control = conn.execute(select(site_control).where(site_control.c.site_id == self.site_id)).mappings().first()
        gate = _gate_refusal(self.site_id, control)
        if gate:
            return [gate] * len(commands)
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
                             next_number=self.numbers.next, site_id=self.site_id, epoch=control["epoch"], now=now)
        outcomes = []
        for cmd in commands:
            outcomes.append(self._one(ctx, cmd, stored))
        writes.flush(conn)
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
        by_principal: dict[str, set[str]] = {}
        for c in commands:
            by_principal.setdefault(c.principal.key, set()).add(c.idempotency_key)
        # OR of (principal = ? AND key IN ...) uses the primary key on SQLite; a row-value IN scans the table.
        t = idempotency_keys.c
        rows = conn.execute(select(idempotency_keys).where(or_(
            *(and_(t.principal == p, t.key.in_(sorted(keys))) for p, keys in sorted(by_principal.items()))
        ))).mappings()
        answers = {}
        for row in rows:
            body = json.loads(row["response"])
            answers[(row["principal"], row["key"])] = (row["request_hash"], Outcome(row["status"], body,
                                                                                    lane=body.get("lane")))
        return answers


def _gate_refusal(site_id: str, control) -> Outcome | None:
    if control is None:
        return refused(503, "site_uninitialised", f"site {site_id} has no control row; run `standbyctl db upgrade`")
    if control["role"] != SiteRole.PRIMARY.value:
        primary = control["primary_site"] or "unknown"
        return refused(503, "not_primary", f"site {site_id} is a standby and refuses writes; the primary is site {primary}")
    if control["intake_state"] == IntakeState.FENCED.value:
        return refused(503, "fenced", f"site {site_id} is fenced at epoch {control['epoch']}; another site is primary")
    if control["intake_state"] != IntakeState.OPEN.value:
        return refused(503, "intake_frozen", f"site {site_id} has intake {control['intake_state']} for a cutover; retry")
    return None
