"""The load profile: config/loadtest.yaml validated, rates from capacity.yaml, users and pacing, shapes as data."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from loadtests import profile as lp
from loadtests.capacity import load_capacity
from loadtests.users_support import FreezeWatch, replication_lag_s

REPO = Path(__file__).resolve().parents[2]
PROFILE_PATH = REPO / "config" / "loadtest.yaml"


@pytest.fixture(scope="module")
def profile() -> lp.LoadProfile:
    return lp.load_profile(PROFILE_PATH)


@pytest.fixture(scope="module")
def capacity():
    return load_capacity(REPO / "config" / "capacity.yaml")


def test_repository_profile_agrees_with_capacity(profile, capacity):
    lp.check_against_capacity(profile, capacity)
    assert profile.requests_per_declaration == 5.5
    assert profile.declarant.export_share == 0.45 and profile.declarant.amend_share == 0.05
    assert profile.declarant.polls_per_declaration == 2 and profile.officer.approve_share == 0.9
    assert profile.steady.multipliers == [1, 2, 3]
    assert profile.tariff_path.exists()


def test_behaviour_implies_about_the_capacity_requests_per_declaration(profile):
    estimate = lp.estimated_requests_per_declaration(profile)
    assert estimate == pytest.approx(5.5, rel=0.15)
    # by hand: 1 + 0.05 + 1 + (0.53 + 0.47 x 0.9) + 2 + 0.47 + (10/85 x 20/5)
    assert estimate == pytest.approx(1 + 0.05 + 1 + 0.53 + 0.47 * 0.9 + 2 + 0.47 + 10 / 85 * 20 / 5)


def test_target_rate_is_the_design_peak_times_the_multiplier(capacity):
    assert lp.target_declarations_per_s(capacity, 1) == pytest.approx(3.41, abs=0.01)
    assert lp.target_declarations_per_s(capacity, 3) == pytest.approx(10.22, abs=0.02)
    with pytest.raises(ValueError, match="multiplier"):
        lp.target_declarations_per_s(capacity, 0)


def test_users_and_pacing_give_the_target_rate(profile):
    plan = lp.plan_users(profile, 3.4)
    assert plan.declarant_pacing_s == 20 and plan.officer_pacing_s == 5
    assert plan.declarants == 68  # 3.4/s x 20 s a declaration
    assert plan.declarants / plan.declarant_pacing_s == pytest.approx(3.4)
    assert plan.officers == math.ceil(68 * 10 / 85) == 8
    assert plan.readers == math.ceil(68 * 5 / 85) == 4
    assert plan.total == 80
    assert lp.plan_users(profile, 3.4, with_readers=False).readers == 0
    assert lp.plan_users(profile, 0.001).declarants == 1


def test_steady_schedule(profile, capacity):
    [stage] = lp.steady_schedule(profile, capacity, 2, with_readers=False)
    declarants = math.ceil(capacity.declarations_per_s(2) * 20)
    assert stage.users == declarants + math.ceil(declarants * 10 / 85)
    assert stage.duration_s == 600 and stage.label == "steady 2x"
    assert stage.spawn_rate == pytest.approx(round(stage.users / 30, 2))


def test_step_schedule_climbs_to_the_maximum(profile, capacity):
    stages = lp.step_schedule(profile, capacity)
    assert [s.label for s in stages] == [f"step {m}x" for m in range(4, 49, 4)]
    assert all(s.duration_s == 60 for s in stages)
    users = [s.users for s in stages]
    assert users == sorted(users) and len(set(users)) == len(users)
    assert lp.stage_at(stages, 0) is stages[0] and lp.stage_at(stages, 61) is stages[1]
    assert lp.stage_at(stages, 12 * 60) is None


def test_spike_rate_is_derived_from_the_first_day_after_cutover(profile, capacity):
    # 50,300 declarations in 12 h compressed 24-fold: 30 minutes at ~27.9/s (~8.2x design)
    assert lp.spike_duration_s(profile) == 1800
    assert lp.spike_declarations_per_s(profile) == pytest.approx(50300 / 1800)
    before, spike, after = lp.spike_schedule(profile, capacity)
    assert (before.duration_s, spike.duration_s, after.duration_s) == (60, 1800, 120)
    assert before.users == after.users < spike.users
    assert spike.label == f"spike {50300 / 1800 / capacity.declarations_per_s(1):.1f}x" == "spike 8.2x"
    assert spike.users == lp.plan_users(profile, 50300 / 1800).total


def test_errors_name_the_key(tmp_path):
    raw = yaml.safe_load(PROFILE_PATH.read_text())
    raw["declarant"]["cycle_s"] = -1
    del raw["spike"]["compression"]
    raw["officer"]["think_s"] = {"min": 2, "max": 1}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError) as err:
        lp.load_profile(bad)
    text = str(err.value)
    assert str(bad) in text and "declarant.cycle_s" in text and "spike.compression" in text
    assert "officer.think_s" in text and "below min" in text
    with pytest.raises(ValueError, match="cannot read"):
        lp.load_profile(tmp_path / "missing.yaml")


def test_mismatched_requests_per_declaration_is_refused(profile, capacity):
    other = profile.model_copy(update={"requests_per_declaration": 4.0})
    with pytest.raises(ValueError, match="requests_per_declaration: 4.0 .* 5.5"):
        lp.check_against_capacity(other, capacity)


def test_replication_lag_is_the_worst_stream():
    text = ("# TYPE replication_lag_seconds gauge\n"
            'replication_lag_seconds{stream="A->B"} 0.25\n'
            'replication_lag_seconds{stream="A->C"} 0.5\n')
    assert replication_lag_s(text) == 0.5
    assert replication_lag_s("# TYPE other gauge\nother 1\n") is None


def test_freeze_is_measured_from_frozen_to_open():
    fired = []

    class Events:
        class request:
            @staticmethod
            def fire(**kw):
                fired.append(kw)

    env = type("Env", (), {"events": Events})()
    watch = FreezeWatch(env, "http://x/readyz", 0.25)
    assert watch.observe("open", 0.0) is None
    assert watch.observe("frozen", 1.0) is None
    assert watch.observe("frozen", 2.0) is None
    assert watch.observe("open", 2.5) == pytest.approx(1500)
    assert [(f["request_type"], f["name"], f["response_time"]) for f in fired] == [("INTAKE", "frozen", 1500)]


def test_tokens_file_errors_name_the_key(tmp_path):
    from loadtests.users_support import load_tokens

    path = tmp_path / "tokens.json"
    path.write_text('{"declarants": [{"tax_code": "0100118911"}], "offices": ["01CA"]}')
    with pytest.raises(ValueError, match=r"--tokens-file .*declarants\.0\.token"):
        load_tokens(path)
    path.write_text('{"declarants": [{"tax_code": "0100118911", "token": "t"}], "offices": ["01CA"]}')
    assert load_tokens(path).officers == []
    with pytest.raises(ValueError, match="cannot read"):
        load_tokens(tmp_path / "missing.json")
