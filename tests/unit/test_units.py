"""The pure parts of unit resolution: map names, choosing the version a code is read in, the search plan."""
from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import Column, Date, MetaData, String, Table
from sqlalchemy.dialects import sqlite

from standby.store.orgmap import MapState
from standby.store.units import (Columns, Search, UnitRow, UnknownMap, UnknownUnit, choose_version, map_label,
                                 parse_map, plan_search, unit_filter)

LEGACY, NEW = date(1900, 1, 1), date(2025, 7, 1)
YEN_BAI = UnitRow("province", "15", LEGACY, "Tỉnh Yên Bái")
LAO_CAI = UnitRow("province", "15", NEW, "Tỉnh Lào Cai")
HA_GIANG = UnitRow("province", "02", LEGACY, "Tỉnh Hà Giang")
SWITCHED = MapState(NEW, "vn-2025-two-tier", LEGACY, 1.0)
NOT_SWITCHED = MapState(LEGACY, None, None, None)


def test_map_names_and_labels() -> None:
    assert (map_label(LEGACY), map_label(NEW)) == ("legacy", "2025")
    assert parse_map("legacy", [LEGACY, NEW]) == LEGACY
    assert parse_map("2025", [LEGACY, NEW]) == NEW
    assert parse_map("2025-07-01", [LEGACY, NEW]) == NEW
    with pytest.raises(UnknownMap, match=r"map '2030' is not a map version of this site; the versions are legacy"):
        parse_map("2030", [LEGACY, NEW])
    with pytest.raises(UnknownMap):
        parse_map("1900", [LEGACY, NEW])  # the legacy map is named 'legacy' (or its date), not by its open start


def test_an_ambiguous_code_is_read_in_the_active_map_and_the_answer_names_the_other_meaning() -> None:
    choice = choose_version("province", "15", [YEN_BAI, LAO_CAI], active=NEW)
    assert (choice.unit, choice.resolved_by, choice.namesakes) == (LAO_CAI, "active_map", (YEN_BAI,))
    assert choice.sentence() == ("province 15 read in the active 2025 map: Tỉnh Lào Cai; in the legacy map 15 is "
                                 "Tỉnh Yên Bái (ask with map=legacy)")


def test_a_named_map_wins_over_the_active_one() -> None:
    choice = choose_version("province", "15", [YEN_BAI, LAO_CAI], active=NEW, named=LEGACY)
    assert (choice.unit, choice.resolved_by) == (YEN_BAI, "named")


def test_a_code_of_one_map_only_is_read_there_whatever_is_active() -> None:
    choice = choose_version("province", "02", [HA_GIANG], active=NEW)
    assert (choice.unit, choice.resolved_by, choice.namesakes) == (HA_GIANG, "only_version", ())
    assert choice.sentence() == "province 02 exists only in the legacy map: Tỉnh Hà Giang"


def test_unknown_codes_and_codes_absent_from_the_named_map_are_refused_with_a_sentence() -> None:
    with pytest.raises(UnknownUnit, match="no province with code 99 in any map version of this site"):
        choose_version("province", "99", [], active=NEW)
    with pytest.raises(UnknownUnit, match="province 02 does not exist in the 2025 map .it exists in legacy."):
        choose_version("province", "02", [HA_GIANG], active=NEW, named=NEW)


def test_a_unit_of_the_active_map_is_searched_under_its_predecessors_on_the_previous_map() -> None:
    search = plan_search(LAO_CAI, SWITCHED, ("10", "15"))
    assert search == Search(((NEW, ("15",)), (LEGACY, ("10", "15"))))
    assert search.as_list() == [
        {"codes": "current", "map_version": "2025-07-01", "map": "2025", "unit_codes": ["15"]},
        {"codes": "current", "map_version": "1900-01-01", "map": "legacy", "unit_codes": ["10", "15"]}]


def test_a_unit_of_the_previous_map_is_searched_under_its_code_and_the_previous_codes_of_moved_records() -> None:
    assert plan_search(YEN_BAI, SWITCHED, ()) == Search(((LEGACY, ("15",)),), ((LEGACY, ("15",)),))


def test_before_any_switch_a_unit_is_searched_under_its_own_code_only() -> None:
    assert plan_search(YEN_BAI, NOT_SWITCHED, ()) == Search(((LEGACY, ("15",)),))
    assert plan_search(LAO_CAI, NOT_SWITCHED, ()) == Search(((NEW, ("15",)),))


def _sql(condition) -> str:
    return str(condition.compile(dialect=sqlite.dialect(), compile_kwargs={"render_postcompile": True}))


def test_unit_filter_matches_current_pairs_and_previous_pairs_with_bound_parameters() -> None:
    t = Table("t", MetaData(), Column("p", String), Column("v", Date), Column("pp", String), Column("pv", Date))
    cols = Columns(t.c.p, t.c.v, t.c.pp, t.c.pv)
    sql = _sql(unit_filter(Search(((NEW, ("15",)), (LEGACY, ("10", "15")))), cols))
    assert sql.count("t.v = ?") == 2 and "t.p IN (?)" in sql and "t.p IN (?, ?)" in sql and "pp" not in sql
    sql = _sql(unit_filter(Search(((LEGACY, ("15",)),), ((LEGACY, ("15",)),)), cols))
    assert "t.v = ? AND t.p IN (?)" in sql and "t.pv = ? AND t.pp IN (?)" in sql and "'15'" not in sql
    assert _sql(unit_filter(Search(()), cols)) == "0"  # nothing to search: false, nothing matches
