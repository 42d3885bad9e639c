"""The data of an org-structure change set: fates, per-unit rows, the manifest, and the problems a check finds.

A change set maps every unit of one map version (the *source*) to units of another (the *target*), per kind of unit.
Each old unit has one row: its :class:`Fate`, its successors (one, or several for a split), the one default successor
(where records land when nothing more precise is known) and a review flag (records landing on a split ward's
default are flagged for a human). Codes are opaque zero-padded strings; a code means nothing without its map
version, so nothing here ever reads a source code as a target code.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChangeSet", "CoverageRow", "Fate", "KindManifest", "Manifest", "Problem", "UnitFate", "UnitKind"]


class Fate(str, enum.Enum):
    """What became of one old unit. UNCHANGED: same code and name, sole predecessor. RENAMED: one successor that has
    no other predecessor, but another code or name. MERGED: one successor shared with other old units. SPLIT:
    several successors, one of them the default."""

    UNCHANGED = "unchanged"
    RENAMED = "renamed"
    MERGED = "merged"
    SPLIT = "split"


class UnitKind(str, enum.Enum):
    PROVINCE = "province"
    WARD = "ward"


@dataclass(frozen=True)
class Problem:
    """One bad row (or missing row): the file, its line (0 when the row is missing), the code concerned, why."""

    file: str
    line: int
    code: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file} line {self.line}" if self.line else self.file
        return f"{where} ({self.code}): {self.message}" if self.code else f"{where}: {self.message}"


@dataclass(frozen=True)
class UnitFate:
    """One old unit's row in a kind's mapping file (`line` is its 1-based line; line 1 is the header)."""

    old_code: str
    fate: Fate
    successors: tuple[str, ...]
    default_successor: str
    needs_review: bool
    line: int


@dataclass(frozen=True)
class CoverageRow:
    """A customs branch covering one old province, and the target province that territory now lies in."""

    branch_code: str
    old_province_code: str
    new_province_code: str
    status: str
    line: int


class KindManifest(BaseModel):
    """One kind of unit: the old and new unit lists (CSV with a `code` column) and the mapping file, paths relative
    to the manifest. `source` == `target` declares an in-place renumbering within one map version: there a chain of
    codes that comes back to itself (a cycle) is refused, since re-applying it would move records twice."""

    model_config = ConfigDict(extra="forbid")
    source: str
    target: str
    mapping: str
    code_width: int = Field(ge=1, le=12)


class CoverageManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    branches: str  # CSV with a `code` column: the branches (unchanged by the change set)
    mapping: str  # CSV branch_code,old_province_code,new_province_code,status


class Manifest(BaseModel):
    """changeset.yaml."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    effective_at: datetime
    from_version: str = Field(min_length=1)
    to_version: str = Field(min_length=1)
    kinds: dict[UnitKind, KindManifest]
    customs_coverage: CoverageManifest | None = None
    licence: str = ""


@dataclass(frozen=True)
class ChangeSet:
    """A loaded change set: the manifest, per kind the old and new unit codes (code -> line in its file) and the
    mapping rows, and the customs coverage rows. Loading does not judge it; see ``validate``."""

    manifest: Manifest
    source_units: dict[UnitKind, dict[str, int]]
    target_units: dict[UnitKind, dict[str, int]]
    rows: dict[UnitKind, tuple[UnitFate, ...]]
    branches: frozenset[str]
    coverage: tuple[CoverageRow, ...]

    def file_of(self, kind: UnitKind) -> str:
        return self.manifest.kinds[kind].mapping
