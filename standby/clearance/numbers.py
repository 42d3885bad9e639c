"""Hands out declaration numbers from blocks reserved in the database."""
from __future__ import annotations

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from standby.domain.numbers import DeclarationNumber
from standby.store.schema import number_blocks


class NumberAllocator:
    """Numbers for one worker, from blocks of the site's sequence.

    Contract: `reserve(conn, n)` runs inside the caller's transaction, after the caller has checked the site may
    write. If that transaction commits, the block is the worker's: numbers not used before a crash are skipped,
    never issued again. If it rolls back, the caller must call `forget()`: the database counter went back, so the
    block could be handed to another worker."""

    def __init__(self, site_digit: int, block_size: int):
        self._digit, self._block = site_digit, block_size
        self._next = self._end = 0

    @property
    def available(self) -> int:
        return self._end - self._next

    def reserve(self, conn: Connection, needed: int) -> None:
        if self.available >= needed:
            return
        size = max(self._block, needed)
        ensure_sequence_row(conn, self._digit)
        start = conn.execute(
            update(number_blocks).where(number_blocks.c.site_digit == self._digit)
            .values(next_sequence=number_blocks.c.next_sequence + size)
            .returning(number_blocks.c.next_sequence)
        ).scalar_one()
        self._next, self._end = start - size, start

    def forget(self) -> None:
        self._next = self._end = 0

    def next(self) -> DeclarationNumber:
        if self._next >= self._end:
            raise RuntimeError("number block exhausted: reserve() in the batch's transaction first")
        number = DeclarationNumber(self._digit, self._next)
        self._next += 1
        return number


def ensure_sequence_row(conn: Connection, site_digit: int) -> None:
    """Create the site's sequence row if missing; safe when two workers race to do it."""
    dialect = {"postgresql": postgresql, "sqlite": sqlite}[conn.dialect.name]
    conn.execute(dialect.insert(number_blocks).values(site_digit=site_digit, next_sequence=1)
                 .on_conflict_do_nothing(index_elements=["site_digit"]))


def peek_next_sequence(engine: Engine, site_digit: int) -> int | None:
    with engine.connect() as conn:
        return conn.execute(select(number_blocks.c.next_sequence).where(number_blocks.c.site_digit == site_digit)).scalar()
