"""Judge a loaded change set: pure, no I/O.

Contract: :func:`validate` returns every :class:`Problem` (an empty list means the change set is valid); each names
the mapping file, the row's line and the old code, or for a unit that has no row, the file that should hold it and
the code. Refused: an old unit with no row (unmapped), a row for a unit the source map lacks, a duplicate row, a
successor the target map lacks, a default successor not among the successors, a fate that disagrees with its
successors, a split not flagged for review, a cycle in an in-place kind (source map == target map), and for customs
coverage an unknown branch, an uncovered or twice-covered old province, or a new province other than the province
mapping's. :func:`summarise` counts rows per fate per kind.
"""
from __future__ import annotations

from collections import Counter

from cutover.orgchange.spec import ChangeSet, Fate, Problem, UnitFate, UnitKind

__all__ = ["validate", "summarise", "COVERAGE_STATUSES"]

COVERAGE_STATUSES = frozenset({"confirmed", "assumed"})


def _fate_problem(row: UnitFate, predecessors: Counter) -> str | None:
    """Why the row's fate disagrees with its successors, or None."""
    count = len(row.successors)
    if row.fate is Fate.SPLIT:
        if count < 2:
            return f"fate split needs two or more successors, has {count}"
        if not row.needs_review:
            return "a split must have needs_review=1 (records landing on its default are flagged)"
        return None
    if count != 1:
        return f"fate {row.fate.value} needs exactly one successor, has {count}"
    shared = predecessors[row.successors[0]] > 1
    if row.fate is Fate.MERGED and not shared:
        return f"fate merged, but {row.successors[0]} has no other predecessor (renamed or unchanged?)"
    if row.fate in (Fate.RENAMED, Fate.UNCHANGED) and shared:
        return f"fate {row.fate.value}, but {row.successors[0]} has other predecessors (merged?)"
    if row.fate is Fate.UNCHANGED and row.successors[0] != row.old_code:
        return f"fate unchanged, but its successor {row.successors[0]} is another code (renamed?)"
    return None


def _cycles(rows: tuple[UnitFate, ...]) -> set[str]:
    """Old codes on a cycle of old -> successor edges (self-edges ignored), for an in-place kind."""
    edges = {r.old_code: [s for s in r.successors if s != r.old_code] for r in rows}
    on_cycle: set[str] = set()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in edges:
        if state.get(start):
            continue
        path, stack = [], [(start, iter(edges.get(start, ())))]
        state[start] = 1
        path.append(start)
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                on_cycle.update(path[path.index(nxt):])
            elif not state.get(nxt) and nxt in edges:
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(edges[nxt])))
    return on_cycle


def _kind_problems(cs: ChangeSet, kind: UnitKind) -> list[Problem]:
    km, rows = cs.manifest.kinds[kind], cs.rows[kind]
    source, target, file = cs.source_units[kind], cs.target_units[kind], km.mapping
    problems: list[Problem] = []
    predecessors = Counter(s for r in rows for s in set(r.successors))
    seen: dict[str, int] = {}
    cyclic = _cycles(rows) if km.source == km.target else set()
    for r in rows:
        def bad(message: str) -> None:
            problems.append(Problem(file, r.line, r.old_code, message))

        if r.old_code in seen:
            bad(f"duplicate row for {kind.value} {r.old_code} (first on line {seen[r.old_code]})")
            continue
        seen[r.old_code] = r.line
        if r.old_code not in source:
            bad(f"{r.old_code} is not a {kind.value} of the source map ({km.source})")
        unknown = [s for s in r.successors if s not in target]
        if unknown:
            bad(f"successor(s) {', '.join(unknown)} are not {kind.value}s of the target map ({km.target})")
        if r.default_successor not in r.successors:
            bad(f"default successor {r.default_successor} is not among its successors {'|'.join(r.successors)}")
        if (why := _fate_problem(r, predecessors)) is not None:
            bad(why)
        if r.old_code in cyclic:
            bad(f"on a cycle of {kind.value} codes within one map version (applying it twice would move records again)")
    for code, line in source.items():
        if code not in seen:
            problems.append(Problem(file, 0, code, f"{kind.value} {code} ({km.source} line {line}) has no row: unmapped"))
    return problems


def _coverage_problems(cs: ChangeSet) -> list[Problem]:
    cm = cs.manifest.customs_coverage
    if cm is None:
        return []
    provinces = {r.old_code: r for r in cs.rows.get(UnitKind.PROVINCE, ())}
    source = cs.source_units.get(UnitKind.PROVINCE, {})
    target = cs.target_units.get(UnitKind.PROVINCE, {})
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for c in cs.coverage:
        def bad(message: str) -> None:
            problems.append(Problem(cm.mapping, c.line, c.old_province_code, message))

        if c.branch_code not in cs.branches:
            bad(f"branch {c.branch_code!r} is not in {cm.branches}")
        if c.status not in COVERAGE_STATUSES:
            bad(f"status {c.status!r} must be confirmed or assumed")
        if c.old_province_code in seen:
            bad(f"province {c.old_province_code} is covered twice (first on line {seen[c.old_province_code]})")
            continue
        seen[c.old_province_code] = c.line
        if c.old_province_code not in source:
            bad(f"{c.old_province_code} is not a province of the source map")
        elif c.new_province_code not in target:
            bad(f"new province {c.new_province_code} is not a province of the target map")
        elif c.old_province_code in provinces and provinces[c.old_province_code].default_successor != c.new_province_code:
            bad(f"new province {c.new_province_code} disagrees with the province mapping "
                f"({provinces[c.old_province_code].default_successor})")
    for code, line in source.items():
        if code not in seen:
            problems.append(Problem(cm.mapping, 0, code, f"province {code} is covered by no branch: unmapped"))
    return problems


def validate(cs: ChangeSet) -> list[Problem]:
    """Every problem of the change set, in file order per kind; empty when it is valid."""
    problems: list[Problem] = []
    for kind in cs.manifest.kinds:
        problems += _kind_problems(cs, kind)
    return problems + _coverage_problems(cs)


def summarise(cs: ChangeSet) -> dict[str, dict[str, int]]:
    """{kind: {fate: count, ..., 'needs_review': n, 'target_units': n}}, plus 'customs_coverage' when present."""
    out: dict[str, dict[str, int]] = {}
    for kind, rows in cs.rows.items():
        counts = Counter(r.fate.value for r in rows)
        out[kind.value] = {f.value: counts.get(f.value, 0) for f in Fate}
        out[kind.value]["needs_review"] = sum(r.needs_review for r in rows)
        out[kind.value]["target_units"] = len(cs.target_units[kind])
        out[kind.value]["target_units_without_predecessor"] = len(
            set(cs.target_units[kind]) - {s for r in rows for s in r.successors})
    if cs.manifest.customs_coverage is not None:
        branches_per_new = Counter(new for (_b, new) in {(c.branch_code, c.new_province_code) for c in cs.coverage})
        out["customs_coverage"] = {"rows": len(cs.coverage), "branches": len({c.branch_code for c in cs.coverage}),
                                   "new_provinces_covered": len(branches_per_new),
                                   "new_provinces_with_several_branches": sum(v > 1 for v in branches_per_new.values())}
    return out
