"""Build the reference org data in config/org/ from the public source data.

Rerun (from the repository root; stdlib only, output is deterministic):

    .venv/bin/python config/org/build_org_data.py
    .venv/bin/python config/org/build_org_data.py --source /work/shared/data --out config/org

Inputs (under --source, default /work/shared/data):
    vn-admin-units-2025/legacy_to_2025_wards.csv   every legacy ward -> its 2025 ward(s)  (MIT, see LICENSE)
    vn-admin-units-2025/wards_2025.csv             the 3,321 wards of 2025
    vn-admin-units-2025/LICENSE                    copied verbatim next to the output
    customs-branches-2025.csv                      20 regional customs branches and the legacy provinces they cover

Outputs (under --out, default this script's directory): plain UTF-8 CSV with a header row, `\\n` line endings,
sorted, no comment lines. See README.md there for what each file holds.

Rules worth knowing:
  * Codes are zero-padded: provinces 2 digits, districts 3, wards 5 (the source stores `7.0` or `7`).
  * Five legacy rows have no ward code (island districts without wards); they are skipped and counted.
  * Split legacy wards (several rows / isDividedWard=True): the DEFAULT successor is the FIRST row for that legacy
    ward in the order of legacy_to_2025_wards.csv; every row of a split ward gets needs_review=1.
  * Customs branch province names are matched to the legacy short names after NFC and whitespace normalisation;
    the only alias is NAME_ALIASES below. Any other unmatched name is a hard error.
  * customs_offices.csv is SYNTHETIC (the public data has no office list): one office per (branch, legacy
    province); code = 2-digit legacy province code + 'C' + a letter A, B, ... counting that province's offices in
    branch order (I..XX) - with one office per province this is always `<pp>CA`; sections are `01 02`.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
import unicodedata
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = Path("/work/shared/data")

# customs-branches-2025.csv still uses the province's old name; since 1 Jan 2025 it is "Thành phố Huế",
# which is how the admin-unit data (legacy code 46) names it.
NAME_ALIASES = {"Thừa Thiên Huế": "Huế"}

LEGACY_PREFIXES = ("Thành phố ", "Tỉnh ")
ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50}


class BuildError(RuntimeError):
    pass


def norm(text: str) -> str:
    """NFC and single spaces, trimmed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def pad(value: str, width: int, what: str) -> str:
    """'7.0' / '7' / '007' -> zero-padded string of `width` digits."""
    raw = value.strip()
    number = float(raw) if "." in raw else int(raw)
    if number != int(number) or int(number) < 0:
        raise BuildError(f"{what}: {value!r} is not a non-negative whole number")
    out = f"{int(number):0{width}d}"
    if len(out) != width:
        raise BuildError(f"{what}: {value!r} does not fit in {width} digits")
    return out


def roman_value(numeral: str) -> int:
    total = 0
    for i, ch in enumerate(numeral):
        v = ROMAN[ch]
        total += -v if i + 1 < len(numeral) and ROMAN[numeral[i + 1]] > v else v
    return total


def read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise BuildError(f"{path}: missing columns {missing}")
        return list(reader)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def short_legacy_name(name: str) -> str:
    for prefix in LEGACY_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    raise BuildError(f"legacy province name {name!r} has no known prefix {LEGACY_PREFIXES}")


def build(source: Path, out: Path) -> dict[str, int]:
    admin = source / "vn-admin-units-2025"
    legacy_rows = read_csv(admin / "legacy_to_2025_wards.csv",
                           ("provinceCode", "province", "districtCode", "district", "wardCode", "ward",
                            "newProvinceCode", "newWardCode"))
    new_rows = read_csv(admin / "wards_2025.csv",
                        ("province", "provinceShort", "provinceCode", "ward", "wardShort", "wardType", "wardCode",
                         "wardLat", "wardLon", "wardAreaKm2"))
    branch_rows = read_csv(source / "customs-branches-2025.csv",
                           ("branch", "province_pre_merger", "headquarters", "status"))

    # --- legacy provinces and wards -------------------------------------------------------------------------
    provinces_legacy: dict[str, tuple[str, str]] = {}
    wards_legacy: dict[str, list[str]] = {}
    successors: dict[str, list[tuple[str, str]]] = defaultdict(list)  # legacy ward -> [(new ward, new prov)] in file order
    province_pairs: dict[str, set[str]] = defaultdict(set)
    skipped = 0
    for line, r in enumerate(legacy_rows, start=2):
        where = f"legacy_to_2025_wards.csv line {line}"
        pcode = pad(r["provinceCode"], 2, where)
        pname = norm(r["province"])
        entry = (pname, short_legacy_name(pname))
        if provinces_legacy.setdefault(pcode, entry) != entry:
            raise BuildError(f"{where}: province {pcode} named both {provinces_legacy[pcode]} and {entry}")
        new_pcode = pad(r["newProvinceCode"], 2, where)
        province_pairs[pcode].add(new_pcode)
        if not r["wardCode"].strip():
            skipped += 1
            continue
        wcode = pad(r["wardCode"], 5, where)
        ward = [wcode, norm(r["ward"]), pcode, pad(r["districtCode"], 3, where), norm(r["district"])]
        if wards_legacy.setdefault(wcode, ward) != ward:
            raise BuildError(f"{where}: legacy ward {wcode} differs from its earlier row: {wards_legacy[wcode]} / {ward}")
        successors[wcode].append((pad(r["newWardCode"], 5, where), new_pcode))

    # --- 2025 provinces and wards ---------------------------------------------------------------------------
    provinces_2025: dict[str, tuple[str, str]] = {}
    wards_2025: dict[str, list[str]] = {}
    for line, r in enumerate(new_rows, start=2):
        where = f"wards_2025.csv line {line}"
        pcode = pad(r["provinceCode"], 2, where)
        entry = (norm(r["province"]), norm(r["provinceShort"]))
        if provinces_2025.setdefault(pcode, entry) != entry:
            raise BuildError(f"{where}: province {pcode} named both {provinces_2025[pcode]} and {entry}")
        wcode = pad(r["wardCode"], 5, where)
        if wcode in wards_2025:
            raise BuildError(f"{where}: ward code {wcode} appears twice")
        wards_2025[wcode] = [wcode, norm(r["ward"]), norm(r["wardShort"]), norm(r["wardType"]), pcode,
                             r["wardLat"].strip(), r["wardLon"].strip(), r["wardAreaKm2"].strip()]

    # --- mapping ----------------------------------------------------------------------------------------------
    mapping: list[list[str]] = []
    for wcode, succ in successors.items():
        if len(set(succ)) != len(succ):
            raise BuildError(f"legacy ward {wcode} lists the same successor twice: {succ}")
        split = len(succ) > 1
        for i, (new_ward, new_prov) in enumerate(succ):
            if new_ward not in wards_2025:
                raise BuildError(f"legacy ward {wcode} maps to unknown 2025 ward {new_ward}")
            if wards_2025[new_ward][4] != new_prov:
                raise BuildError(f"legacy ward {wcode}: 2025 ward {new_ward} is not in province {new_prov}")
            mapping.append([wcode, wards_legacy[wcode][2], new_ward, new_prov,
                            "1" if i == 0 else "0", "1" if split else "0"])
    mapping.sort(key=lambda m: (m[0], m[2]))

    bad = {p: sorted(n) for p, n in province_pairs.items() if len(n) != 1}
    if bad:
        raise BuildError(f"legacy provinces mapping to more than one 2025 province: {bad}")
    province_mapping = sorted([p, next(iter(n))] for p, n in province_pairs.items())
    unknown = sorted({n for _, n in province_mapping} - set(provinces_2025))
    if unknown:
        raise BuildError(f"province mapping targets unknown 2025 provinces: {unknown}")

    # --- customs branches -------------------------------------------------------------------------------------
    by_short = {short: code for code, (_, short) in provinces_legacy.items()}
    branches: dict[str, dict[str, object]] = {}
    branch_provinces: list[list[str]] = []
    unmatched: list[str] = []
    for line, r in enumerate(branch_rows, start=2):
        code = norm(r["branch"])
        if not code or any(ch not in ROMAN for ch in code):
            raise BuildError(f"customs-branches-2025.csv line {line}: branch {code!r} is not a roman numeral")
        status = norm(r["status"])
        if status not in ("confirmed", "assumed"):
            raise BuildError(f"customs-branches-2025.csv line {line}: status {status!r} is not confirmed/assumed")
        name = norm(r["province_pre_merger"])
        pcode = by_short.get(NAME_ALIASES.get(name, name))
        if pcode is None:
            unmatched.append(f"line {line}: {name!r}")
            continue
        b = branches.setdefault(code, {"hq": set(), "statuses": set()})
        b["hq"].add(norm(r["headquarters"]))
        b["statuses"].add(status)
        branch_provinces.append([code, pcode, status])
    if unmatched:
        raise BuildError("customs-branches-2025.csv names no legacy province: " + "; ".join(unmatched))
    counts = defaultdict(int)
    for _, pcode, _ in branch_provinces:
        counts[pcode] += 1
    missing = sorted(set(provinces_legacy) - set(counts))
    twice = sorted(p for p, c in counts.items() if c > 1)
    if missing or twice:
        raise BuildError(f"branches must cover each legacy province once; missing {missing}, repeated {twice}")
    branch_rows_out = []
    for code in sorted(branches, key=roman_value):
        hqs = branches[code]["hq"]
        if len(hqs) != 1:
            raise BuildError(f"branch {code} has several headquarters: {sorted(hqs)}")
        status = "confirmed" if branches[code]["statuses"] == {"confirmed"} else "assumed"
        branch_rows_out.append([code, f"Chi cục Hải quan khu vực {code}", next(iter(hqs)), status])
    branch_provinces.sort(key=lambda b: (roman_value(b[0]), b[1]))

    # --- synthetic customs offices ----------------------------------------------------------------------------
    offices = []
    per_province = defaultdict(int)
    for bcode, pcode, _ in branch_provinces:  # branch order I..XX, then province code
        letter = chr(ord("A") + per_province[pcode])
        per_province[pcode] += 1
        short = provinces_legacy[pcode][1]
        offices.append([f"{pcode}C{letter}", f"Hải quan cửa khẩu {short} (synthetic)", bcode, pcode, "01 02"])
    offices.sort(key=lambda o: o[0])

    # --- write ------------------------------------------------------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    outputs = {
        "provinces_legacy.csv": (["code", "name", "short_name"],
                                 [[c, n, s] for c, (n, s) in sorted(provinces_legacy.items())]),
        "wards_legacy.csv": (["code", "name", "province_code", "district_code", "district_name"],
                             [wards_legacy[c] for c in sorted(wards_legacy)]),
        "provinces_2025.csv": (["code", "name", "short_name"],
                               [[c, n, s] for c, (n, s) in sorted(provinces_2025.items())]),
        "wards_2025.csv": (["code", "name", "short_name", "ward_type", "province_code", "lat", "lon", "area_km2"],
                           [wards_2025[c] for c in sorted(wards_2025)]),
        "ward_mapping_2025.csv": (["legacy_ward_code", "legacy_province_code", "new_ward_code",
                                   "new_province_code", "is_default", "needs_review"], mapping),
        "province_mapping_2025.csv": (["legacy_province_code", "new_province_code"], province_mapping),
        "customs_branches.csv": (["code", "name", "headquarters", "status"], branch_rows_out),
        "customs_branch_provinces.csv": (["branch_code", "legacy_province_code", "status"], branch_provinces),
        "customs_offices.csv": (["code", "name", "branch_code", "legacy_province_code", "sections"], offices),
    }
    for filename, (header, rows) in outputs.items():
        write_csv(out / filename, header, rows)
    shutil.copyfile(admin / "LICENSE", out / "LICENSE-vn-admin-units-2025")

    stats = {name: len(rows) for name, (_, rows) in outputs.items()}
    stats["skipped legacy rows without a ward code"] = skipped
    stats["split legacy wards"] = sum(1 for s in successors.values() if len(s) > 1)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="shared data directory")
    parser.add_argument("--out", type=Path, default=HERE, help="output directory (default: config/org)")
    args = parser.parse_args(argv)
    try:
        stats = build(args.source, args.out)
    except (BuildError, KeyError, ValueError) as exc:
        print(f"build_org_data: FAILED: {exc}", file=sys.stderr)
        return 1
    for name, count in stats.items():
        print(f"{name:45s} {count:>6,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
