"""The org reference data in config/org/ loads, has the expected shape, and broken copies fail with a clear error."""
from __future__ import annotations

import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from standby.reference.orgdata import OrgData, OrgDataError, load_org_data

ORG_DIR = Path(__file__).resolve().parents[2] / "config" / "org"


@pytest.fixture(scope="module")
def org() -> OrgData:
    return load_org_data(ORG_DIR)


@pytest.fixture()
def org_copy(tmp_path: Path) -> Path:
    target = tmp_path / "org"
    shutil.copytree(ORG_DIR, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return target


def _edit_line(path: Path, line_no: int, transform) -> None:
    """Replace 1-based physical line `line_no` of `path` with transform(old_line)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[line_no - 1] = transform(lines[line_no - 1])
    path.write_text("\n".join(lines), encoding="utf-8", newline="")


def test_counts(org: OrgData) -> None:
    assert len(org.provinces_legacy) == 63
    assert len(org.provinces_2025) == 34
    assert len(org.wards_2025) == 3321
    assert len(org.wards_legacy) == 10035
    assert len(org.branches) == 20
    assert len(org.offices) == 63
    assert len(org.province_mapping) == 63
    assert set(org.province_mapping.values()) == {p.code for p in org.provinces_2025}


def test_branches_cover_every_legacy_province_once(org: OrgData) -> None:
    covered = Counter(province for _, province, _ in org.branch_provinces)
    assert set(covered) == {p.code for p in org.provinces_legacy}
    assert set(covered.values()) == {1}
    assert {b.code for b in org.branches} == {bp[0] for bp in org.branch_provinces}
    assert [b.name for b in org.branches][:2] == ["Chi cục Hải quan khu vực I", "Chi cục Hải quan khu vực II"]
    assert {b.status for b in org.branches} == {"confirmed", "assumed"}


def test_offices_are_synthetic_and_one_per_province(org: OrgData) -> None:
    assert Counter(o.province_code for o in org.offices) == Counter(p.code for p in org.provinces_legacy)
    for o in org.offices:
        assert re.fullmatch(r"\d{2}C[A-Z]", o.code)
        assert o.code[:2] == o.province_code
        assert o.name.endswith("(synthetic)")


def test_codes_are_zero_padded(org: OrgData) -> None:
    for p in org.provinces_legacy + org.provinces_2025:
        assert re.fullmatch(r"\d{2}", p.code)
    for w in org.wards_legacy + org.wards_2025:
        assert re.fullmatch(r"\d{5}", w.code) and re.fullmatch(r"\d{2}", w.province_code)
    hanoi = next(p for p in org.provinces_legacy if p.code == "01")
    assert (hanoi.name, hanoi.short_name) == ("Thành phố Hà Nội", "Hà Nội")
    assert org.wards_legacy[0].code == "00001"


def test_known_mapping_row(org: OrgData) -> None:
    phuc_xa = next(w for w in org.wards_legacy if w.code == "00001")
    assert (phuc_xa.name, phuc_xa.province_code) == ("Phường Phúc Xá", "01")
    rows = [s for s in org.ward_mapping if s.legacy_ward_code == "00001"]
    assert len(rows) == 1
    s = rows[0]
    assert (s.new_ward_code, s.new_province_code, s.is_default, s.needs_review) == ("00097", "01", True, False)
    assert next(w for w in org.wards_2025 if w.code == "00097").name == "Phường Hồng Hà"
    assert org.province_mapping["01"] == "01"


def test_every_legacy_ward_has_one_default_and_splits_need_review(org: OrgData) -> None:
    by_legacy = defaultdict(list)
    for s in org.ward_mapping:
        by_legacy[s.legacy_ward_code].append(s)
    assert set(by_legacy) == {w.code for w in org.wards_legacy}
    splits = 0
    for code, rows in by_legacy.items():
        assert sum(s.is_default for s in rows) == 1, code
        if len(rows) > 1:
            splits += 1
            assert all(s.needs_review for s in rows), code
            assert len({s.new_province_code for s in rows}) == 1, code
        else:
            assert not rows[0].needs_review, code
    assert splits == 471


def test_split_ward_default_is_first_source_row(org: OrgData) -> None:
    # Phường Cống Vị (00007) is split; its first row in the source maps it to Giảng Võ (00025).
    assert org.default_successor("00007").new_ward_code == "00025"


def test_copy_loads(org_copy: Path) -> None:
    assert len(load_org_data(org_copy).wards_2025) == 3321


def test_unpadded_ward_code_names_file_and_line(org_copy: Path) -> None:
    _edit_line(org_copy / "wards_legacy.csv", 3, lambda line: line.replace("00004,", "4,", 1))
    with pytest.raises(OrgDataError, match=r"wards_legacy\.csv line 3: code '4' must be 5 digits"):
        load_org_data(org_copy)


def test_unknown_province_names_file_and_line(org_copy: Path) -> None:
    _edit_line(org_copy / "wards_2025.csv", 10, lambda line: re.sub(r",\d\d,", ",99,", line, count=1))
    with pytest.raises(OrgDataError, match=r"wards_2025\.csv line 10: province_code '99' is not a known province"):
        load_org_data(org_copy)


def test_unknown_branch_names_file_and_line(org_copy: Path) -> None:
    _edit_line(org_copy / "customs_offices.csv", 2, lambda line: line.replace(",I,", ",XXX,"))
    with pytest.raises(OrgDataError, match=r"customs_offices\.csv line 2: branch_code 'XXX' is not a known branch"):
        load_org_data(org_copy)


def test_second_default_successor_names_file_and_line(org_copy: Path) -> None:
    path = org_copy / "ward_mapping_2025.csv"
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[4] == "00007,01,00008,01,0,1"  # line 5: the non-default row of split ward 00007
    _edit_line(path, 5, lambda line: "00007,01,00008,01,1,1")
    with pytest.raises(OrgDataError, match=r"ward_mapping_2025\.csv line 6: legacy ward 00007 has a second default"):
        load_org_data(org_copy)


def test_missing_default_successor_names_file_and_line(org_copy: Path) -> None:
    _edit_line(org_copy / "ward_mapping_2025.csv", 2, lambda line: "00001,01,00097,01,0,0")
    with pytest.raises(OrgDataError, match=r"ward_mapping_2025\.csv line 2: legacy ward 00001 has no default"):
        load_org_data(org_copy)


def test_missing_file_is_an_org_data_error(org_copy: Path) -> None:
    (org_copy / "customs_branches.csv").unlink()
    with pytest.raises(OrgDataError, match=r"customs_branches\.csv"):
        load_org_data(org_copy)
