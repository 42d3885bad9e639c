"""Read a change set from disk: ``changeset.yaml`` plus the CSV files it names.

Contract: :func:`load_changeset` returns ``(ChangeSet, problems)``. A manifest that cannot be read or does not fit
the schema, or a file it names that is missing or lacks a column, raises :class:`ChangeSetError` (one clear sentence,
naming the file). Rows that are malformed (bad code, unknown fate, bad flag) are returned as :class:`Problem`s, one
per row, and left out of the ChangeSet, so that a single run names every bad row.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

import yaml
from pydantic import ValidationError

from cutover.orgchange.spec import ChangeSet, CoverageRow, Fate, Manifest, Problem, UnitFate

__all__ = ["ChangeSetError", "load_changeset", "MAPPING_COLUMNS", "COVERAGE_COLUMNS"]

MAPPING_COLUMNS = ("old_code", "fate", "default_successor", "successors", "needs_review")
COVERAGE_COLUMNS = ("branch_code", "old_province_code", "new_province_code", "status")
SUCCESSOR_SEPARATOR = "|"


class ChangeSetError(ValueError):
    """The change set cannot be read at all; the message names the file and what is wrong."""


def _rows(path: Path, label: str, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str] | None]]:
    """(line, row) per data row; row is None when the line has the wrong number of fields."""
    try:
        fh = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise ChangeSetError(f"{label}: cannot be read ({exc.strerror}).") from exc
    with fh:
        reader = csv.DictReader(fh)
        try:
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise ChangeSetError(f"{label} line 1: the header lacks column(s) {', '.join(missing)}.")
            for row in reader:
                broken = None in row or any(v is None for v in row.values())
                yield reader.line_num, None if broken else {k: v.strip() for k, v in row.items()}
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ChangeSetError(f"{label} line {reader.line_num}: unreadable CSV ({exc}).") from exc


def _units(path: Path, label: str) -> dict[str, int]:
    """code -> line of a unit list (any CSV with a `code` column)."""
    return {row["code"]: line for line, row in _rows(path, label, ("code",)) if row is not None}


def _code_problem(code: str, width: int) -> str | None:
    if len(code) != width or not code.isdigit():
        return f"code {code!r} must be {width} digits, zero-padded"
    return None


def _parse_row(label: str, line: int, row: dict[str, str] | None, width: int) -> UnitFate | Problem:
    if row is None:
        return Problem(label, line, "", "wrong number of fields")
    old = row["old_code"]
    try:
        fate = Fate(row["fate"])
    except ValueError:
        return Problem(label, line, old, f"fate {row['fate']!r} must be one of {', '.join(f.value for f in Fate)}")
    successors = tuple(s.strip() for s in row["successors"].split(SUCCESSOR_SEPARATOR)) if row["successors"] else ()
    for code in (old, row["default_successor"], *successors):
        if (why := _code_problem(code, width)) is not None:
            return Problem(label, line, old, why)
    if row["needs_review"] not in ("0", "1"):
        return Problem(label, line, old, f"needs_review {row['needs_review']!r} must be 0 or 1")
    return UnitFate(old, fate, successors, row["default_successor"], row["needs_review"] == "1", line)


def load_changeset(manifest_path: Path) -> tuple[ChangeSet, list[Problem]]:
    """Load the manifest at `manifest_path` (or `<dir>/changeset.yaml`) and its files; see the module contract."""
    manifest_path = Path(manifest_path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / "changeset.yaml"
    try:
        raw = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ChangeSetError(f"{manifest_path}: cannot be read ({exc.strerror}).") from exc
    except yaml.YAMLError as exc:
        raise ChangeSetError(f"{manifest_path}: not valid YAML ({exc}).") from exc
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors())
        raise ChangeSetError(f"{manifest_path}: {errors}.") from exc
    base = manifest_path.parent
    problems: list[Problem] = []
    sources, targets, rows = {}, {}, {}
    for kind, km in manifest.kinds.items():
        sources[kind] = _units(base / km.source, km.source)
        targets[kind] = _units(base / km.target, km.target)
        parsed = [_parse_row(km.mapping, n, r, km.code_width)
                  for n, r in _rows(base / km.mapping, km.mapping, MAPPING_COLUMNS)]
        problems += [p for p in parsed if isinstance(p, Problem)]
        rows[kind] = tuple(p for p in parsed if isinstance(p, UnitFate))
    branches: frozenset[str] = frozenset()
    coverage: list[CoverageRow] = []
    if manifest.customs_coverage is not None:
        cm = manifest.customs_coverage
        branches = frozenset(_units(base / cm.branches, cm.branches))
        for n, r in _rows(base / cm.mapping, cm.mapping, COVERAGE_COLUMNS):
            if r is None:
                problems.append(Problem(cm.mapping, n, "", "wrong number of fields"))
                continue
            coverage.append(CoverageRow(r["branch_code"], r["old_province_code"], r["new_province_code"],
                                        r["status"], n))
    return ChangeSet(manifest, sources, targets, rows, branches, tuple(coverage)), problems
