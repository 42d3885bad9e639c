"""The resolver maps old codes to (default, all successors) and never guesses; the SHIPPED 2025 change set validates
and resolves every legacy province and ward in config/org to existing 2025 units, as the org data says."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from cutover.orgchange import Fate, Resolver, UnitKind, UnknownCode, load_changeset, validate
from standby.reference.orgdata import OrgData, load_org_data
from tests.unit.test_orgchange_validate import write_changeset

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "changesets" / "vn-2025-two-tier" / "changeset.yaml"


@pytest.fixture(scope="module")
def shipped():
    changeset, problems = load_changeset(SHIPPED)
    return changeset, problems, Resolver(changeset)


@pytest.fixture(scope="module")
def org() -> OrgData:
    return load_org_data(ROOT / "config" / "org")


def test_resolve_gives_default_and_all_successors(tmp_path: Path) -> None:
    resolver = Resolver(load_changeset(write_changeset(tmp_path))[0])
    split = resolver.resolve(UnitKind.WARD, "00001")
    assert (split.fate, split.default_successor, split.successors, split.needs_review) == (
        Fate.SPLIT, "00010", ("00010", "00011"), True)
    assert resolver.resolve(UnitKind.PROVINCE, "02").successors == ("05",)


def test_unknown_codes_are_errors_never_guesses(tmp_path: Path) -> None:
    resolver = Resolver(load_changeset(write_changeset(tmp_path))[0])
    for kind, code in ((UnitKind.PROVINCE, "2"), (UnitKind.PROVINCE, "05"), (UnitKind.WARD, "00010")):
        with pytest.raises(UnknownCode, match=repr(code)):
            resolver.resolve(kind, code)  # unpadded, or a code of the new map: not a source code


def test_the_shipped_2025_change_set_validates(shipped) -> None:
    changeset, problems, _ = shipped
    assert problems == [] and validate(changeset) == []
    assert changeset.manifest.id == "vn-2025-two-tier" and (len(changeset.target_units[UnitKind.PROVINCE]),
                                                            len(changeset.target_units[UnitKind.WARD])) == (34, 3321)


def test_every_legacy_province_resolves_to_its_2025_province(shipped, org: OrgData) -> None:
    resolver = shipped[2]
    new_codes = {p.code for p in org.provinces_2025}
    for p in org.provinces_legacy:
        r = resolver.resolve(UnitKind.PROVINCE, p.code)
        assert r.successors == (org.province_mapping[p.code],) and r.default_successor in new_codes
    # codes are reused with new meanings: old 15 (Yên Bái) and old 10 (Lào Cai) both land on new 15
    assert resolver.resolve(UnitKind.PROVINCE, "10").default_successor == "15"


def test_every_legacy_ward_resolves_to_its_2025_wards_with_the_datas_default(shipped, org: OrgData) -> None:
    resolver = shipped[2]
    new_codes = {w.code for w in org.wards_2025}
    expected, defaults = defaultdict(set), {}
    for s in org.ward_mapping:
        expected[s.legacy_ward_code].add(s.new_ward_code)
        if s.is_default:
            defaults[s.legacy_ward_code] = s.new_ward_code
    split = 0
    for w in org.wards_legacy:
        r = resolver.resolve(UnitKind.WARD, w.code)
        assert set(r.successors) == expected[w.code] <= new_codes
        assert r.default_successor == defaults[w.code] == r.successors[0]
        assert r.needs_review == (len(r.successors) > 1) == (r.fate is Fate.SPLIT)
        split += r.fate is Fate.SPLIT
    assert split == 471
