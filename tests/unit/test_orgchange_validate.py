"""The change-set validator refuses each kind of bad row and names it (file, line, code); a good set passes.

Crafted change sets are small directories written by `write_changeset` (also used by the resolver and CLI tests)."""
from __future__ import annotations

from pathlib import Path

import pytest

from cutover.orgchange import ChangeSetError, Fate, load_changeset, summarise, validate

HEADER = "old_code,fate,default_successor,successors,needs_review"
PROVINCES = ["01,unchanged,01,01,0", "02,merged,05,05,0", "03,merged,05,05,0"]
WARDS = ["00001,split,00010,00010|00011,1", "00002,merged,00011,00011,0", "00003,renamed,00012,00012,0"]
COVERAGE = ["I,01,01,confirmed", "II,02,05,assumed", "II,03,05,assumed"]


def _csv(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def write_changeset(root: Path, provinces: list[str] = PROVINCES, wards: list[str] = WARDS,
                    coverage: list[str] = COVERAGE, in_place_provinces: bool = False) -> Path:
    """A tiny change set under `root`: provinces 01,02,03 -> 01,05; wards 00001..3 -> 00010..12; branches I, II.
    With in_place_provinces the province kind maps 01,02,03 onto the same list (a renumbering within one version).
    Returns the manifest path. Line N of a mapping file is rows[N-2]."""
    root.mkdir(parents=True, exist_ok=True)
    _csv(root / "prov_old.csv", "code,name", ["01,A", "02,B", "03,C"])
    _csv(root / "prov_new.csv", "code,name", ["01,A", "05,BC"])
    _csv(root / "ward_old.csv", "code,name", ["00001,a", "00002,b", "00003,c"])
    _csv(root / "ward_new.csv", "code,name", ["00010,x", "00011,y", "00012,z"])
    _csv(root / "branches.csv", "code,name", ["I,one", "II,two"])
    _csv(root / "provinces.csv", HEADER, provinces)
    _csv(root / "wards.csv", HEADER, wards)
    _csv(root / "coverage.csv", "branch_code,old_province_code,new_province_code,status", coverage)
    target = "prov_old.csv" if in_place_provinces else "prov_new.csv"
    (root / "changeset.yaml").write_text(f"""
id: test-set
effective_at: "2025-07-01T00:00:00+07:00"
from_version: old
to_version: new
kinds:
  province: {{source: prov_old.csv, target: {target}, mapping: provinces.csv, code_width: 2}}
  ward: {{source: ward_old.csv, target: ward_new.csv, mapping: wards.csv, code_width: 5}}
customs_coverage: {{branches: branches.csv, mapping: coverage.csv}}
""", encoding="utf-8")
    return root / "changeset.yaml"


def problems_of(manifest: Path) -> list[tuple[str, int, str, str]]:
    changeset, problems = load_changeset(manifest)
    return [(p.file, p.line, p.code, p.message) for p in problems + validate(changeset)]


def test_a_good_change_set_has_no_problems_and_is_counted_per_fate(tmp_path: Path) -> None:
    changeset, problems = load_changeset(write_changeset(tmp_path))
    assert problems == [] and validate(changeset) == []
    summary = summarise(changeset)
    assert summary["province"]["unchanged"] == 1 and summary["province"]["merged"] == 2
    assert summary["ward"]["split"] == 1 and summary["ward"]["merged"] == 1 and summary["ward"]["renamed"] == 1
    assert summary["ward"]["needs_review"] == 1
    assert summary["customs_coverage"]["rows"] == 3
    assert changeset.rows[next(iter(changeset.rows))][0].fate is Fate.UNCHANGED


def test_an_unmapped_unit_is_named_by_file_and_code(tmp_path: Path) -> None:
    found = problems_of(write_changeset(tmp_path, wards=WARDS[:2]))
    assert [(f, c) for f, _line, c, m in found if "unmapped" in m] == [("wards.csv", "00003")]


def test_a_successor_missing_from_the_target_map_names_its_row(tmp_path: Path) -> None:
    found = problems_of(write_changeset(tmp_path, wards=[WARDS[0], "00002,merged,00099,00099,0", WARDS[2]]))
    assert [(f, line, c) for f, line, c, m in found if "00099" in m and "target map" in m] == [("wards.csv", 3, "00002")]


def test_a_default_not_among_the_successors_names_its_row(tmp_path: Path) -> None:
    found = problems_of(write_changeset(tmp_path, wards=["00001,split,00012,00010|00011,1", *WARDS[1:]]))
    assert [(f, line, c) for f, line, c, m in found if "default successor" in m] == [("wards.csv", 2, "00001")]


def test_a_cycle_within_one_map_version_names_every_row_on_it(tmp_path: Path) -> None:
    rows = ["01,renamed,02,02,0", "02,renamed,01,01,0", "03,unchanged,03,03,0"]
    found = problems_of(write_changeset(tmp_path, provinces=rows, coverage=[], in_place_provinces=True))
    cyclic = [(f, line, c) for f, line, c, m in found if "cycle" in m]
    assert cyclic == [("provinces.csv", 2, "01"), ("provinces.csv", 3, "02")]


def test_codes_that_chase_each_other_across_two_map_versions_are_not_a_cycle(tmp_path: Path) -> None:
    # old 00001 -> new 00002 while old 00002 -> new 00001 is normal between versions (codes are reused).
    (tmp_path / "set").mkdir()
    manifest = write_changeset(tmp_path / "set")
    _csv(tmp_path / "set" / "ward_new.csv", "code,name", ["00001,x", "00002,y", "00012,z"])
    _csv(tmp_path / "set" / "wards.csv", HEADER,
         ["00001,renamed,00002,00002,0", "00002,renamed,00001,00001,0", "00003,renamed,00012,00012,0"])
    assert problems_of(manifest) == []


def test_each_bad_row_is_named_in_one_run(tmp_path: Path) -> None:
    wards = ["00001,split,00010,00010,1",          # split with one successor
             "00002,exploded,00011,00011,0",       # unknown fate
             "00003,renamed,00012,00012,0",
             "00003,renamed,00012,00012,0",        # duplicate
             "00004,renamed,00011,00011,0",        # not in the source map (and 00011 now has two predecessors)
             "1,renamed,00012,00012,0"]            # not zero-padded
    found = problems_of(write_changeset(tmp_path, wards=wards))
    lines = {(line, code) for f, line, code, _m in found if f == "wards.csv" and line}
    assert {(2, "00001"), (3, "00002"), (5, "00003"), (6, "00004"), (7, "1")} <= lines


def test_a_split_without_review_flag_and_a_false_merge_are_refused(tmp_path: Path) -> None:
    wards = ["00001,split,00010,00010|00011,0", "00002,merged,00011,00011,0", "00003,merged,00012,00012,0"]
    found = problems_of(write_changeset(tmp_path, wards=wards))
    assert {(line, c) for _f, line, c, _m in found} == {(2, "00001"), (4, "00003")}


def test_customs_coverage_problems_name_their_rows(tmp_path: Path) -> None:
    coverage = ["III,01,01,confirmed", "II,02,01,assumed"]  # unknown branch; wrong new province; 03 uncovered
    found = problems_of(write_changeset(tmp_path, coverage=coverage))
    assert {(f, line, c) for f, line, c, _m in found} == {("coverage.csv", 2, "01"), ("coverage.csv", 3, "02"),
                                                           ("coverage.csv", 0, "03")}


def test_an_unreadable_manifest_is_a_clear_error(tmp_path: Path) -> None:
    manifest = write_changeset(tmp_path)
    manifest.write_text(manifest.read_text().replace("effective_at", "effective"), encoding="utf-8")
    with pytest.raises(ChangeSetError, match="effective_at"):
        load_changeset(manifest)
    (tmp_path / "wards.csv").unlink()
    manifest.write_text(manifest.read_text().replace("effective:", "effective_at:"), encoding="utf-8")
    with pytest.raises(ChangeSetError, match="wards.csv"):
        load_changeset(manifest)
