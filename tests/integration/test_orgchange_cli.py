"""`standbyctl orgchange validate|resolve` through click's CliRunner: exit codes, stdout, stderr (no servers)."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from standbyctl.cli import main
from tests.unit.test_orgchange_validate import WARDS, write_changeset

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "changesets" / "vn-2025-two-tier" / "changeset.yaml"


def run(*args: str, stdin: str | None = None):
    return CliRunner().invoke(main, ["orgchange", *args], input=stdin)


def test_validate_the_shipped_change_set_prints_counts_per_fate() -> None:
    result = run("validate", str(SHIPPED))
    assert result.exit_code == 0, result.stderr
    assert "vn-2025-two-tier is valid" in result.stdout
    assert "province: unchanged 11, renamed 0, merged 52, split 0" in result.stdout
    assert "ward: unchanged 121, renamed 11, merged 9432, split 471" in result.stdout


def test_validate_lists_every_bad_row_and_exits_1(tmp_path: Path) -> None:
    wards = ["00001,split,00012,00010|00011,1", "00002,merged,00099,00099,0"]  # bad default; unknown; 00003 unmapped
    result = run("validate", str(write_changeset(tmp_path, wards=wards)))
    assert result.exit_code == 1
    bad = [line for line in result.stderr.splitlines() if line.startswith("bad row:")]
    assert any("wards.csv line 2 (00001)" in line and "default successor" in line for line in bad)
    assert any("wards.csv line 3 (00002)" in line and "00099" in line for line in bad)
    assert any("wards.csv (00003)" in line and "unmapped" in line for line in bad)
    assert "refused" in result.stderr and result.stdout == ""


def test_validate_a_missing_file_exits_2_without_a_trace(tmp_path: Path) -> None:
    result = run("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2 and "cannot be read" in result.stderr and "Traceback" not in result.output


def test_resolve_writes_csv_for_known_codes_and_reports_unknown_ones(tmp_path: Path) -> None:
    result = run("resolve", str(SHIPPED), "--kind", "ward", stdin="00007\n\n99999\n00001\n")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == ["old_code,default_successor,all_successors", "00007,00025,00025|00008",
                                          "00001,00097,00097"]
    assert "'99999'" in result.stderr and "00007" not in result.stderr


def test_resolve_provinces_exits_0_when_all_are_known() -> None:
    result = run("resolve", str(SHIPPED.parent), "--kind", "province", stdin="02\n45\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["02,08,08", "45,44,44"] and result.stderr == ""


def test_resolve_refuses_an_invalid_change_set(tmp_path: Path) -> None:
    result = run("resolve", str(write_changeset(tmp_path, wards=WARDS[:2])), "--kind", "ward", stdin="00001\n")
    assert result.exit_code == 2 and "not a valid change set" in result.stderr and result.stdout == ""


def test_validate_with_site_counts_what_the_change_set_touches_read_only(tmp_path: Path, org, tariff, rules) -> None:
    from sqlalchemy import update

    from standby.store.engine import make_engine
    from standby.store.schema import declarations
    from standby.store.seed import seed
    from tests.conftest import make_site_db

    site = make_site_db(tmp_path, org, enterprises_count=300, officers_per_section=1)
    engine = make_engine(site.url)
    seed(engine, org, declarations_count=12, tariff=tariff, rules=rules)  # closed (cleared) declarations
    with engine.begin() as conn:  # reopen three: only open declarations are counted
        bases = [r[0] for r in conn.execute(declarations.select().with_only_columns(declarations.c.base).limit(3))]
        conn.execute(update(declarations).where(declarations.c.base.in_(bases)).values(state="pre_declared"))
    engine.dispose()
    before = (tmp_path / "site-a.db").read_bytes()
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "settings-A.yaml"), "orgchange", "validate",
                                       str(SHIPPED), "--site", "A"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "on site A (read-only counts, addresses in the legacy map):" in lines
    province_lines = [line for line in lines if line.startswith("  province ")]
    assert len(province_lines) == 63  # every legacy province has a synthetic office
    assert any(line.startswith("  province 02 merged -> 08: ") for line in province_lines)
    totals = [line for line in lines if line.startswith("  provinces ")]
    enterprises = sum(int(line.split("enterprises ")[1].split(",")[0]) for line in totals)
    open_declarations = sum(int(line.split("open declarations ")[1].split(",")[0]) for line in totals)
    offices = sum(int(line.split("offices ")[1].split(",")[0]) for line in totals)
    assert (enterprises, open_declarations, offices) == (300, 3, 63)
    assert not any("UNMAPPED" in line for line in lines)
    assert (tmp_path / "site-a.db").read_bytes() == before
