"""12-digit declaration numbers, unique across sites forever.

Layout: digit 1 is the issuing site's digit (1-9), digits 2-11 a per-site sequence, digit 12 the amendment count.
Two sites never share a digit, so no site can issue a number another could; the sequence is handed out in blocks
reserved by a committed transaction before use, so a crash skips the rest of a block but never reuses it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from standby.domain.errors import DomainError

_NUMBER = re.compile(r"[1-9][0-9]{11}")
SEQUENCE_LIMIT = 10**10
MAX_AMENDMENTS = 9


@dataclass(frozen=True, order=True)
class DeclarationNumber:
    site_digit: int
    sequence: int
    amendment: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.site_digit <= 9:
            raise ValueError(f"site digit must be 1-9, got {self.site_digit}")
        if not 0 <= self.sequence < SEQUENCE_LIMIT:
            raise ValueError(f"sequence out of range: {self.sequence}")
        if not 0 <= self.amendment <= MAX_AMENDMENTS:
            raise ValueError(f"amendment out of range: {self.amendment}")

    @property
    def base(self) -> str:
        """The first 11 digits: the declaration's identity across amendments."""
        return f"{self.site_digit}{self.sequence:010d}"

    def __str__(self) -> str:
        return f"{self.base}{self.amendment}"

    def amended(self) -> "DeclarationNumber":
        if self.amendment >= MAX_AMENDMENTS:
            raise DomainError(
                "amendment_limit",
                f"declaration {self} has been amended {MAX_AMENDMENTS} times; the 12th digit cannot go higher",
                status=409,
            )
        return DeclarationNumber(self.site_digit, self.sequence, self.amendment + 1)

    @classmethod
    def parse(cls, text: str, field: str = "number") -> "DeclarationNumber":
        # ASCII only: str.isdigit() also accepts '²' and Arabic-Indic digits, which int() may read as an alias.
        if not isinstance(text, str) or not _NUMBER.fullmatch(text):
            raise DomainError(
                "number_invalid", f"{field} must be a 12-digit declaration number, got {text!r}", field, 400
            )
        return cls(int(text[0]), int(text[1:11]), int(text[11]))
