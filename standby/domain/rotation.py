"""Yellow/red-lane officer assignment: rotation through the office section's registered officer list."""
from __future__ import annotations

from collections.abc import Sequence

from standby.domain.errors import DomainError


def pick_officer(officer_ids_in_order: Sequence[str], next_position: int, office: str, section: str) -> tuple[str, int]:
    """Return the officer whose turn it is and the rotation's next position.

    `officer_ids_in_order` is the active registered list in its registered order; `next_position` is the stored
    cursor (it may exceed the list's length after officers left: it wraps)."""
    if not officer_ids_in_order:
        raise DomainError(
            "no_officer",
            f"office {office} has no active officer registered for section {section}; an operator must register one",
            status=409,
        )
    index = next_position % len(officer_ids_in_order)
    return officer_ids_in_order[index], index + 1
