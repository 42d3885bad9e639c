from pathlib import Path

import pytest

from loadtests.capacity import CapacityInputs, derive, load_capacity
from standby.settings import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_design_capacity_follows_the_published_figures():
    c = load_capacity(REPO / "config" / "capacity.yaml")
    assert round(c.declarations_per_year) == round(16_800_000 / 1.37)
    assert c.peak_declarations_per_s == pytest.approx(c.peak_hour / 3600)
    assert c.declarations_per_s(3) == pytest.approx(3 * c.peak_declarations_per_s)
    assert "12,262,774" in c.explain()


def test_derivation_by_hand():
    c = derive(CapacityInputs(declarations_2024=3_000_000, load_over_design_2024=1.5, working_days_per_year=200,
                              peak_day_factor=2, business_hours_per_day=10, peak_hour_factor=1.8,
                              requests_per_declaration=5))
    # 3M/1.5 = 2M a year; /200 = 10,000 a day; x2 = 20,000; /10 x1.8 = 3,600 an hour = 1/s
    assert c.peak_declarations_per_s == pytest.approx(1.0) and c.peak_requests_per_s == pytest.approx(5.0)


def test_bad_capacity_input_names_the_field(tmp_path):
    bad = tmp_path / "capacity.yaml"
    bad.write_text("inputs: {declarations_2024: -1, load_over_design_2024: 1.37, working_days_per_year: 300, "
                   "peak_day_factor: 1.5, business_hours_per_day: 10, peak_hour_factor: 2, requests_per_declaration: 5}")
    with pytest.raises(ValueError, match="declarations_2024"):
        load_capacity(bad)


def test_settings_load_and_resolve_against_the_repo_root():
    s = load_settings(REPO / "config" / "standby.yaml")
    assert s.root == REPO
    assert s.database_url("A") == f"sqlite:///{REPO / 'var' / 'site-a.db'}"
    assert {site.site_digit for site in s.sites.values()} == {1, 2}


@pytest.mark.parametrize("text, words", [
    ("sites: {A: {site_digit: 1, database_url: 'sqlite://'}, B: {site_digit: 1, database_url: 'sqlite://'}}",
     "own site_digit"),
    ("sites: {A: {site_digit: 12, database_url: 'sqlite://'}}", "sites.A.site_digit"),
    ("sites: {A: {site_digit: 1, database_url: 'sqlite://'}}\nsurprise: 1", "surprise"),
    ("[1, 2", "not valid YAML"),
])
def test_bad_settings_are_named(tmp_path, text, words):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_settings(path)


def test_missing_settings_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_command_line_overrides_merge_into_the_files_sections(tmp_path):
    """`standbyctl --ray-address X` sets ray.address and keeps the file's ray.workers (it once replaced the whole
    ray section, so workers: 8 silently became the default)."""
    from standby.settings import merged

    config = tmp_path / "standby.yaml"
    config.write_text("root: .\nray:\n  workers: 8\nsites:\n  A: {site_digit: 1, database_url: 'sqlite:///a.db'}\n")
    settings = load_settings(config, {"ray": {"address": "auto"}})
    assert (settings.ray.address, settings.ray.workers) == ("auto", 8)
    assert settings.site("A").site_digit == 1
    base = {"ray": {"workers": 8}, "sites": {"A": {"site_digit": 1}}}
    assert merged(base, {"ray": {"address": "x"}, "witness_url": "w"}) == {
        "ray": {"workers": 8, "address": "x"}, "sites": {"A": {"site_digit": 1}}, "witness_url": "w"}
    assert base == {"ray": {"workers": 8}, "sites": {"A": {"site_digit": 1}}}  # not changed in place
    assert merged({"ray": {"workers": 8}}, {"ray": None}) == {"ray": None}  # a non-mapping value replaces


def test_auto_workers_are_one_on_sqlite_and_two_on_postgresql_and_a_number_is_kept(tmp_path):
    config = tmp_path / "standby.yaml"
    config.write_text("root: .\nsites:\n  A: {site_digit: 1, database_url: 'sqlite:///a.db'}\n"
                      "  B: {site_digit: 2, database_url: 'postgresql+psycopg://u@h/b'}\n")
    settings = load_settings(config)
    assert settings.ray.workers == "auto"
    assert (settings.clearance_workers("A"), settings.clearance_workers("B")) == (1, 2)
    pinned = load_settings(config, {"ray": {"workers": 3}})
    assert (pinned.clearance_workers("A"), pinned.clearance_workers("B")) == (3, 3)


def test_apply_partitions_follow_the_same_rule_as_workers():
    from standby.settings import ReplicationSettings, writers_for

    assert ReplicationSettings().partitions == "auto"
    assert [writers_for("auto", "sqlite:///b.db"), writers_for("auto", "postgresql+psycopg://u@h/b"),
            writers_for(4, "sqlite:///b.db")] == [1, 2, 4]


def test_a_sqlite_url_names_its_file_without_the_query():
    from pathlib import Path

    from standby.settings import is_sqlite_url, sqlite_file

    assert sqlite_file("sqlite:///var/a.db") == Path("var/a.db")
    assert sqlite_file("sqlite:////abs/b.db?timeout=5") == Path("/abs/b.db")
    assert sqlite_file("sqlite://") is None and sqlite_file("postgresql+psycopg://u@h/b") is None
    assert [is_sqlite_url(u) for u in ("sqlite:///a.db", "sqlite://", "postgresql+psycopg://u@h/b")] == [
        True, True, False]


def test_workers_must_be_a_count_or_auto(tmp_path):
    config = tmp_path / "standby.yaml"
    config.write_text("root: .\nray: {workers: many}\nsites:\n  A: {site_digit: 1, database_url: 'sqlite:///a.db'}\n")
    with pytest.raises(ConfigError, match="workers"):
        load_settings(config)
