"""Retention of idempotency records. The audit log is the legal record and is never pruned here."""
from __future__ import annotations

from sqlalchemy import Engine, delete, func, select

from standby.store.schema import idempotency_keys


def count_older_than(engine: Engine, cutoff: float) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(idempotency_keys)
                            .where(idempotency_keys.c.created_at < cutoff)).scalar()


def prune_idempotency(engine: Engine, cutoff: float, batch: int = 10_000) -> int:
    """Delete idempotency records created before `cutoff` (epoch seconds), in batches of short transactions so
    intake is never held up. A client retrying a request older than that gets it treated as new, so the cutoff must
    lie beyond any client's retry window. Returns the number deleted."""
    deleted = 0
    while True:
        with engine.begin() as conn:
            keys = conn.execute(select(idempotency_keys.c.principal, idempotency_keys.c.key)
                                .where(idempotency_keys.c.created_at < cutoff).limit(batch)).all()
            if not keys:
                return deleted
            for principal in {p for p, _ in keys}:
                conn.execute(delete(idempotency_keys).where(
                    idempotency_keys.c.principal == principal,
                    idempotency_keys.c.key.in_([k for p, k in keys if p == principal])))
            deleted += len(keys)
