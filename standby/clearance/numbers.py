"""Hands out declaration numbers from blocks reserved in committed transactions."""
from __future__ import annotations

from sqlalchemy import Engine, insert, select, update

from standby.domain.numbers import DeclarationNumber
from standby.store.schema import number_blocks


class NumberAllocator:
    """Numbers for one worker. `reserve(n)` must run outside any open batch transaction: it commits the block it
    takes, so numbers handed out after a crash or a rolled-back batch are skipped, never issued twice."""

    def __init__(self, engine: Engine, site_digit: int, block_size: int):
        self._engine, self._digit, self._block = engine, site_digit, block_size
        self._next = self._end = 0

    @property
    def available(self) -> int:
        return self._end - self._next

    def reserve(self, needed: int) -> None:
        if self.available >= needed:
            return
        size = max(self._block, needed)
        with self._engine.begin() as conn:
            start = conn.execute(
                update(number_blocks).where(number_blocks.c.site_digit == self._digit)
                .values(next_sequence=number_blocks.c.next_sequence + size)
                .returning(number_blocks.c.next_sequence)
            ).scalar()
            if start is None:
                conn.execute(insert(number_blocks).values(site_digit=self._digit, next_sequence=1 + size))
                start = 1 + size
        self._next, self._end = start - size, start

    def next(self) -> DeclarationNumber:
        if self._next >= self._end:
            raise RuntimeError("number block exhausted: reserve() before the batch")
        number = DeclarationNumber(self._digit, self._next)
        self._next += 1
        return number


def peek_next_sequence(engine: Engine, site_digit: int) -> int | None:
    with engine.connect() as conn:
        return conn.execute(select(number_blocks.c.next_sequence).where(number_blocks.c.site_digit == site_digit)).scalar()
