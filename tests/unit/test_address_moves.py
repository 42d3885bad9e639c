"""standby.store.address_moves.move_row on plain rows: what a standby ahead of its primary does to arriving rows."""
from __future__ import annotations

from standby.store.address_moves import Moves, move_row

MOVES = Moves("cs-1", source="1900-01-01", target="2025-07-01",
              wards={"00007": ("00025", "01", True), "00001": ("00097", "01", False)},
              provinces={"02": ("08", False), "15": ("15", False)})


def enterprise(ward: str = "00007", version: str = "1900-01-01") -> dict:
    return {"tax_code": "0100000001", "province_code": "01", "ward_code": ward, "address_valid_from": version,
            "prev_province_code": None, "prev_ward_code": None, "prev_address_valid_from": None,
            "address_review": None, "name": "x"}


def declaration(state: str) -> dict:
    return {"base": "10000000001", "state": state, "declarant_province_code": "01", "declarant_ward_code": "00001",
            "declarant_map_version": "1900-01-01", "declarant_prev_province_code": None,
            "declarant_prev_ward_code": None, "declarant_prev_map_version": None, "declarant_review": None}


def test_an_enterprise_on_the_old_map_moves_to_its_wards_default_successor_keeping_the_old_codes() -> None:
    moved = move_row("enterprises", enterprise(), MOVES)
    assert (moved["province_code"], moved["ward_code"], moved["address_valid_from"]) == ("01", "00025", "2025-07-01")
    assert (moved["prev_province_code"], moved["prev_ward_code"], moved["prev_address_valid_from"]) == (
        "01", "00007", "1900-01-01")
    assert moved["address_review"] == "cs-1" and moved["name"] == "x"


def test_a_merged_ward_is_not_flagged_for_review() -> None:
    assert move_row("enterprises", enterprise("00001"), MOVES)["address_review"] is None


def test_an_open_declaration_moves_and_a_closed_one_keeps_its_codes() -> None:
    moved = move_row("declarations", declaration("document_check"), MOVES)
    assert (moved["declarant_ward_code"], moved["declarant_prev_ward_code"]) == ("00097", "00001")
    assert move_row("declarations", declaration("cleared"), MOVES) is None


def test_rows_already_on_the_new_map_or_on_unmapped_units_or_of_other_tables_stay_as_they_came() -> None:
    assert move_row("enterprises", enterprise(version="2025-07-01"), MOVES) is None
    assert move_row("enterprises", enterprise("99999"), MOVES) is None
    assert move_row("goods_lines", {"declaration_base": "1"}, MOVES) is None


def test_an_office_moves_by_its_province() -> None:
    office = {"code": "02CA", "province_code": "02", "province_map_version": "1900-01-01",
              "prev_province_code": None, "prev_province_map_version": None}
    moved = move_row("customs_offices", office, MOVES)
    assert (moved["province_code"], moved["prev_province_code"], moved["province_map_version"]) == (
        "08", "02", "2025-07-01")


def test_moving_is_a_function_of_the_row_so_a_row_applied_twice_lands_the_same() -> None:
    assert move_row("enterprises", enterprise(), MOVES) == move_row("enterprises", enterprise(), MOVES)
