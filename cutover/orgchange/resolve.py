"""Resolve old unit codes through a change set: pure lookups, never a guess.

Contract: :class:`Resolver` is built from a loaded change set (validate it first). ``resolve(kind, old_code)``
returns a :class:`Resolution` (the default successor and every successor, in the mapping file's order) or raises
:class:`UnknownCode` when the code has no row for that kind. A code is read as a code of the change set's source map
only; the resolver never follows a successor through the mapping again (codes are reused across map versions).
"""
from __future__ import annotations

from dataclasses import dataclass

from cutover.orgchange.spec import ChangeSet, Fate, UnitKind

__all__ = ["Resolution", "Resolver", "UnknownCode"]


class UnknownCode(KeyError):
    """The old code has no row in the change set for this kind."""

    def __init__(self, kind: UnitKind, code: str) -> None:
        super().__init__(code)
        self.kind, self.code = kind, code

    def __str__(self) -> str:
        return f"unknown {self.kind.value} code {self.code!r} (not in the change set's source map)"


@dataclass(frozen=True)
class Resolution:
    old_code: str
    fate: Fate
    default_successor: str
    successors: tuple[str, ...]
    needs_review: bool


class Resolver:
    def __init__(self, changeset: ChangeSet) -> None:
        self._rows = {kind: {r.old_code: r for r in rows} for kind, rows in changeset.rows.items()}

    def kinds(self) -> tuple[UnitKind, ...]:
        return tuple(self._rows)

    def resolve(self, kind: UnitKind, old_code: str) -> Resolution:
        """The successors of `old_code` (a code of the source map); UnknownCode if it has no row."""
        row = self._rows.get(kind, {}).get(old_code)
        if row is None:
            raise UnknownCode(kind, old_code)
        return Resolution(row.old_code, row.fate, row.default_successor, row.successors, row.needs_review)
