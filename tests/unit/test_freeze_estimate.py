"""The switchover's freeze estimate, decided before anything is frozen."""
import pytest

from cutover.actions.freeze_estimate import SAFETY_FACTOR, estimate_freeze


def test_a_standby_that_keeps_up_fits_a_one_second_budget():
    e = estimate_freeze(lag_s=0.2, pending_changes=None, apply_rate_per_s=None, budget_s=1.0, fixed_steps_s=0.25)
    assert e.within_budget
    assert e.seconds == pytest.approx(0.2 * SAFETY_FACTOR + 0.25)
    assert "within" in e.reason


def test_a_backlog_over_the_apply_rate_is_refused_before_freezing():
    e = estimate_freeze(lag_s=0.3, pending_changes=40_000, apply_rate_per_s=20_000, budget_s=1.0)
    assert not e.within_budget
    assert e.catch_up_s == pytest.approx(2.0 * SAFETY_FACTOR)
    assert "OVER" in e.reason and "40,000 changes" in e.reason


def test_the_backlog_wins_over_the_lag_when_the_rate_is_known():
    by_backlog = estimate_freeze(lag_s=5.0, pending_changes=100, apply_rate_per_s=10_000, budget_s=1.0)
    assert by_backlog.within_budget


@pytest.mark.parametrize("kwargs", [dict(lag_s=-1, budget_s=1), dict(lag_s=0, budget_s=0)])
def test_nonsense_inputs_raise(kwargs):
    with pytest.raises(ValueError):
        estimate_freeze(pending_changes=None, apply_rate_per_s=None, **kwargs)
