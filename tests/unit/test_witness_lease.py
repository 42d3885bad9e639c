"""cutover.witness.lease.lease_expired, pure: the witness's view of whether the primary's lease is gone."""
import pytest

from cutover.witness.contract import WitnessState
from cutover.witness.lease import lease_expired


def test_a_lease_running_until_later_has_not_expired():
    assert not lease_expired(WitnessState(3, "A", "A", lease_expires_at=100.0), now=99.999)


@pytest.mark.parametrize("now", [100.0, 100.5, 1e9])
def test_a_lease_expires_at_its_time_and_stays_expired(now):
    assert lease_expired(WitnessState(3, "A", "A", lease_expires_at=100.0), now=now)


def test_no_lease_held_counts_as_expired():
    # never renewed, or cleared by a promotion: nobody holds a lease a takeover would have to wait for
    assert lease_expired(WitnessState(4, "B"), now=0.0)
    assert lease_expired(WitnessState(0, None), now=0.0)
