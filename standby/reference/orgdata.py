"""Read and validate the org reference data in ``config/org/`` (built by ``config/org/build_org_data.py``).

Contract: :func:`load_org_data` reads the nine CSV files of an org directory with the ``csv`` module and returns an
immutable :class:`OrgData`, or raises :class:`OrgDataError` whose message names the file, the line number (line 1 is
the header) and what is wrong. It checks that codes are zero-padded digit strings of the right width (provinces 2,
wards 5), that every ward's, mapping's and office's province exists, every office's branch exists, and every legacy
ward has exactly one default successor. Nothing happens at import time; there is no database here.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

__all__ = [
    "CustomsBranch", "CustomsOffice", "OrgData", "OrgDataError", "Province", "Ward", "WardSuccessor",
    "load_org_data",
]

STATUSES = frozenset({"confirmed", "assumed"})


class OrgDataError(ValueError):
    """The org data is missing or inconsistent; the message names the file and line."""


@dataclass(frozen=True)
class Province:
    code: str  # 2 digits, e.g. "01"
    name: str  # "Thành phố Hà Nội"
    short_name: str  # "Hà Nội"


@dataclass(frozen=True)
class Ward:
    code: str  # 5 digits, e.g. "00001"
    name: str
    province_code: str


@dataclass(frozen=True)
class WardSuccessor:
    legacy_ward_code: str
    new_ward_code: str
    new_province_code: str
    is_default: bool  # exactly one per legacy ward
    needs_review: bool  # True on every row of a legacy ward split across several new wards


@dataclass(frozen=True)
class CustomsBranch:
    code: str  # roman numeral I..XX
    name: str
    headquarters: str  # may be empty
    status: str  # "confirmed" or "assumed"


@dataclass(frozen=True)
class CustomsOffice:
    code: str  # 4 characters; the offices are synthetic (see config/org/README.md)
    name: str
    branch_code: str
    province_code: str  # legacy province


@dataclass(frozen=True)
class OrgData:
    provinces_legacy: tuple[Province, ...]
    wards_legacy: tuple[Ward, ...]
    provinces_2025: tuple[Province, ...]
    wards_2025: tuple[Ward, ...]
    ward_mapping: tuple[WardSuccessor, ...]
    province_mapping: dict[str, str]  # legacy province code -> 2025 province code
    branches: tuple[CustomsBranch, ...]
    branch_provinces: tuple[tuple[str, str, str], ...]  # (branch_code, legacy province code, status)
    offices: tuple[CustomsOffice, ...]

    def default_successor(self, legacy_ward_code: str) -> WardSuccessor:
        """The default 2025 ward of a legacy ward; KeyError if the code is unknown."""
        for s in self.ward_mapping:
            if s.legacy_ward_code == legacy_ward_code and s.is_default:
                return s
        raise KeyError(legacy_ward_code)


Row = tuple[int, dict[str, str]]


def _rows(org_dir: Path, filename: str, columns: tuple[str, ...]) -> Iterator[Row]:
    """Yield (line number, row) for each data row, after checking the header has `columns`."""
    path = org_dir / filename
    try:
        fh = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise OrgDataError(f"{filename}: cannot be read from {org_dir} ({exc.strerror}).") from exc
    with fh:
        reader = csv.DictReader(fh)
        try:
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise OrgDataError(f"{filename} line 1: the header lacks column(s) {', '.join(missing)}.")
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise OrgDataError(f"{filename} line {reader.line_num}: wrong number of fields.")
                yield reader.line_num, {k: v.strip() for k, v in row.items()}
        except (csv.Error, UnicodeDecodeError) as exc:
            raise OrgDataError(f"{filename} line {reader.line_num}: unreadable CSV ({exc}).") from exc


class _File:
    """Helpers that raise OrgDataError naming this file and a line."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def fail(self, line: int, what: str) -> OrgDataError:
        return OrgDataError(f"{self.filename} line {line}: {what}.")

    def code(self, line: int, row: dict[str, str], column: str, width: int) -> str:
        value = row[column]
        if len(value) != width or not value.isdigit():
            raise self.fail(line, f"{column} {value!r} must be {width} digits, zero-padded")
        return value

    def ref(self, line: int, column: str, value: str, known: dict[str, object] | set[str], what: str) -> str:
        if value not in known:
            raise self.fail(line, f"{column} {value!r} is not a known {what}")
        return value

    def flag(self, line: int, row: dict[str, str], column: str) -> bool:
        if row[column] not in ("0", "1"):
            raise self.fail(line, f"{column} {row[column]!r} must be 0 or 1")
        return row[column] == "1"

    def unique(self, line: int, key: object, seen: set[object], what: str) -> None:
        if key in seen:
            raise self.fail(line, f"duplicate {what} {key!r}")
        seen.add(key)


def _load(org_dir: Path, filename: str, columns: tuple[str, ...],
          make: Callable[[_File, int, dict[str, str]], object], key: Callable[[object], object]) -> tuple:
    f, seen, out = _File(filename), set(), []
    for line, row in _rows(org_dir, filename, columns):
        item = make(f, line, row)
        f.unique(line, key(item), seen, "entry")
        out.append(item)
    if not out:
        raise OrgDataError(f"{filename} line 1: the file has no data rows.")
    return tuple(out)


def load_org_data(org_dir: Path) -> OrgData:
    """Read and validate every org CSV under `org_dir`; raise OrgDataError naming file, line and fault."""
    org_dir = Path(org_dir)

    def provinces(filename: str) -> tuple[Province, ...]:
        return _load(org_dir, filename, ("code", "name", "short_name"),
                     lambda f, n, r: Province(f.code(n, r, "code", 2), r["name"], r["short_name"]), lambda p: p.code)

    prov_legacy, prov_2025 = provinces("provinces_legacy.csv"), provinces("provinces_2025.csv")
    legacy_codes = {p.code for p in prov_legacy}
    new_codes = {p.code for p in prov_2025}

    def wards(filename: str, provs: set[str]) -> tuple[Ward, ...]:
        return _load(org_dir, filename, ("code", "name", "province_code"), lambda f, n, r: Ward(
            f.code(n, r, "code", 5), r["name"],
            f.ref(n, "province_code", f.code(n, r, "province_code", 2), provs, "province")), lambda w: w.code)

    wards_legacy, wards_2025 = wards("wards_legacy.csv", legacy_codes), wards("wards_2025.csv", new_codes)
    legacy_wards = {w.code: w for w in wards_legacy}
    new_wards = {w.code: w for w in wards_2025}

    f = _File("ward_mapping_2025.csv")
    mapping, seen, defaults, first_line = [], set(), {}, {}
    cols = ("legacy_ward_code", "legacy_province_code", "new_ward_code", "new_province_code", "is_default",
            "needs_review")
    for n, r in _rows(org_dir, f.filename, cols):
        legacy = f.ref(n, "legacy_ward_code", f.code(n, r, "legacy_ward_code", 5), legacy_wards, "legacy ward")
        if f.code(n, r, "legacy_province_code", 2) != legacy_wards[legacy].province_code:
            raise f.fail(n, f"legacy_province_code {r['legacy_province_code']!r} is not the province of ward {legacy}")
        new = f.ref(n, "new_ward_code", f.code(n, r, "new_ward_code", 5), new_wards, "2025 ward")
        if f.code(n, r, "new_province_code", 2) != new_wards[new].province_code:
            raise f.fail(n, f"new_province_code {r['new_province_code']!r} is not the province of ward {new}")
        f.unique(n, (legacy, new), seen, "mapping pair")
        s = WardSuccessor(legacy, new, new_wards[new].province_code, f.flag(n, r, "is_default"),
                          f.flag(n, r, "needs_review"))
        first_line.setdefault(legacy, n)
        if s.is_default:
            if legacy in defaults:
                raise f.fail(n, f"legacy ward {legacy} has a second default successor (first on line {defaults[legacy]})")
            defaults[legacy] = n
        mapping.append(s)
    for w in wards_legacy:
        if w.code not in defaults:
            raise f.fail(first_line.get(w.code, 1), f"legacy ward {w.code} has no default successor")

    f = _File("province_mapping_2025.csv")
    province_mapping: dict[str, str] = {}
    for n, r in _rows(org_dir, f.filename, ("legacy_province_code", "new_province_code")):
        old = f.ref(n, "legacy_province_code", f.code(n, r, "legacy_province_code", 2), legacy_codes, "legacy province")
        f.unique(n, old, set(province_mapping), "legacy province")
        province_mapping[old] = f.ref(n, "new_province_code", f.code(n, r, "new_province_code", 2), new_codes,
                                      "2025 province")
    missing = sorted(legacy_codes - set(province_mapping))
    if missing:
        raise f.fail(n if province_mapping else 1, f"legacy province(s) {', '.join(missing)} have no 2025 province")

    def branch(f: _File, n: int, r: dict[str, str]) -> CustomsBranch:
        if r["status"] not in STATUSES:
            raise f.fail(n, f"status {r['status']!r} must be confirmed or assumed")
        if not r["code"]:
            raise f.fail(n, "code is empty")
        return CustomsBranch(r["code"], r["name"], r["headquarters"], r["status"])

    branches = _load(org_dir, "customs_branches.csv", ("code", "name", "headquarters", "status"), branch,
                     lambda b: b.code)
    branch_codes = {b.code for b in branches}

    def branch_province(f: _File, n: int, r: dict[str, str]) -> tuple[str, str, str]:
        if r["status"] not in STATUSES:
            raise f.fail(n, f"status {r['status']!r} must be confirmed or assumed")
        return (f.ref(n, "branch_code", r["branch_code"], branch_codes, "branch"),
                f.ref(n, "legacy_province_code", f.code(n, r, "legacy_province_code", 2), legacy_codes,
                      "legacy province"), r["status"])

    branch_provinces = _load(org_dir, "customs_branch_provinces.csv",
                             ("branch_code", "legacy_province_code", "status"), branch_province, lambda bp: bp[1])

    def office(f: _File, n: int, r: dict[str, str]) -> CustomsOffice:
        if len(r["code"]) != 4 or not r["code"].isalnum():
            raise f.fail(n, f"code {r['code']!r} must be 4 letters or digits")
        return CustomsOffice(r["code"], r["name"], f.ref(n, "branch_code", r["branch_code"], branch_codes, "branch"),
                             f.ref(n, "legacy_province_code", f.code(n, r, "legacy_province_code", 2), legacy_codes,
                                   "legacy province"))

    offices = _load(org_dir, "customs_offices.csv", ("code", "name", "branch_code", "legacy_province_code"), office,
                    lambda o: o.code)

    return OrgData(prov_legacy, wards_legacy, prov_2025, wards_2025, tuple(mapping), province_mapping, branches,
                   branch_provinces, offices)
