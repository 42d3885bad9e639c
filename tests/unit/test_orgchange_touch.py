"""The site report's pure part: counts per old unit summed per fate, unmapped site codes named."""
from __future__ import annotations

from pathlib import Path

from cutover.orgchange import UnitKind, load_changeset
from cutover.orgchange.touch import UnitTouch, touch_lines
from tests.unit.test_orgchange_validate import write_changeset


def test_touch_lines_sum_per_fate_and_name_unmapped_codes(tmp_path: Path) -> None:
    changeset = load_changeset(write_changeset(tmp_path))[0]
    touch = {UnitKind.PROVINCE: {"02": UnitTouch(enterprises=5, offices=1), "03": UnitTouch(enterprises=2),
                                 "77": UnitTouch(enterprises=1)},
             UnitKind.WARD: {"00001": UnitTouch(enterprises=4, open_declarations=3)}}
    lines = touch_lines(changeset, touch)
    assert "  UNMAPPED province 77 on the site: enterprises 1, open declarations 0, offices 0, officers 0" in lines
    assert "  province 02 merged -> 05: enterprises 5, open declarations 0, offices 1, officers 0" in lines
    assert "  provinces merged: enterprises 7, open declarations 0, offices 1, officers 0" in lines
    assert "  wards split: enterprises 4, open declarations 3, offices 0, officers 0" in lines
    assert "  wards merged: enterprises 0, open declarations 0, offices 0, officers 0" in lines
