"""Build the 2025 two-tier change set (provinces.csv, wards.csv, customs_coverage.csv here) from config/org/.

Rerun from the repository root (stdlib only, deterministic output):

    .venv/bin/python config/changesets/vn-2025-two-tier/build_changeset.py
    .venv/bin/standbyctl orgchange validate config/changesets/vn-2025-two-tier/changeset.yaml

Nothing is invented: successors, the default successor and the review flag are the ones in
config/org/ward_mapping_2025.csv (its `is_default` marker: the first row for the legacy ward in the source file's
order) and config/org/province_mapping_2025.csv. Only the fate is derived, by one rule for both kinds:
several successors -> split; one successor that other old units also map to -> merged; a sole predecessor with the
same code and name -> unchanged; otherwise renamed. Successors are written default first, then in code order.
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORG = HERE.parents[1] / "org"


def read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def fate(old: str, successors: list[str], predecessors: Counter, old_names: dict, new_names: dict) -> str:
    if len(successors) > 1:
        return "split"
    (new,) = successors
    if predecessors[new] > 1:
        return "merged"
    return "unchanged" if new == old and old_names[old] == new_names[new] else "renamed"


def unit_rows(old_units: dict[str, str], new_units: dict[str, str], successors: dict[str, list[str]],
              defaults: dict[str, str], review: dict[str, bool]) -> list[list[str]]:
    predecessors = Counter(s for subs in successors.values() for s in set(subs))
    rows = []
    for old in sorted(old_units):
        subs = successors[old]  # KeyError = an unmapped legacy unit: fail loudly, never guess
        ordered = [defaults[old]] + sorted(s for s in subs if s != defaults[old])
        rows.append([old, fate(old, subs, predecessors, old_units, new_units), defaults[old], "|".join(ordered),
                     "1" if review[old] else "0"])
    return rows


def build(org: Path, out: Path) -> dict[str, int]:
    header = ["old_code", "fate", "default_successor", "successors", "needs_review"]
    prov_old = {r["code"]: r["name"] for r in read(org / "provinces_legacy.csv")}
    prov_new = {r["code"]: r["name"] for r in read(org / "provinces_2025.csv")}
    pmap = {r["legacy_province_code"]: r["new_province_code"] for r in read(org / "province_mapping_2025.csv")}
    provinces = unit_rows(prov_old, prov_new, {o: [n] for o, n in pmap.items()}, pmap, {o: False for o in pmap})
    write(out / "provinces.csv", header, provinces)

    ward_old = {r["code"]: r["name"] for r in read(org / "wards_legacy.csv")}
    ward_new = {r["code"]: r["name"] for r in read(org / "wards_2025.csv")}
    successors, defaults, review = defaultdict(list), {}, {}
    for r in read(org / "ward_mapping_2025.csv"):
        old = r["legacy_ward_code"]
        successors[old].append(r["new_ward_code"])
        review[old] = review.get(old, False) or r["needs_review"] == "1"
        if r["is_default"] == "1":
            defaults[old] = r["new_ward_code"]
    wards = unit_rows(ward_old, ward_new, successors, defaults, review)
    write(out / "wards.csv", header, wards)

    coverage = [[r["branch_code"], r["legacy_province_code"], pmap[r["legacy_province_code"]], r["status"]]
                for r in read(org / "customs_branch_provinces.csv")]
    coverage.sort(key=lambda row: row[1])
    write(out / "customs_coverage.csv", ["branch_code", "old_province_code", "new_province_code", "status"], coverage)
    return {"provinces": len(provinces), "wards": len(wards), "customs_coverage": len(coverage),
            **{f"wards_{k}": v for k, v in sorted(Counter(r[1] for r in wards).items())},
            **{f"provinces_{k}": v for k, v in sorted(Counter(r[1] for r in provinces).items())}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--org", type=Path, default=ORG, help="the org data directory (default config/org)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    try:
        counts = build(args.org, args.out)
    except (OSError, KeyError) as exc:
        print(f"error: cannot build the change set: {exc!r}", file=sys.stderr)
        return 1
    for key, value in counts.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
