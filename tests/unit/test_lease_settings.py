"""The lease's timing rule is checked when the settings load (Patroni's loop_wait + 2*retry_timeout <= ttl, with the
self-fencing margin): a primary that renews on time never passes its own deadline, and it stops writing
fence_margin_s before the witness's lease expires."""
import pytest

from standby.settings import ConfigError, LeaseSettings, load_settings

SITES = "sites: {A: {site_digit: 1, database_url: 'sqlite://'}}\n"


def load(tmp_path, lease: str):
    path = tmp_path / "standby.yaml"
    path.write_text(SITES + lease)
    return load_settings(path)


def test_the_defaults_satisfy_the_rule_and_fence_half_a_second_before_the_witness():
    lease = LeaseSettings()
    assert (lease.ttl_s, lease.renew_interval_s, lease.retry_timeout_s, lease.fence_margin_s) == (3.0, 0.5, 0.75, 0.5)
    assert lease.self_fence_after_s == 2.5
    assert lease.renew_interval_s + 2 * lease.retry_timeout_s <= lease.self_fence_after_s


def test_settings_without_a_lease_section_get_the_defaults(tmp_path):
    assert load(tmp_path, "").lease == LeaseSettings()


def test_a_short_lease_that_keeps_the_rule_loads(tmp_path):
    lease = load(tmp_path, "lease: {ttl_s: 1.5, renew_interval_s: 0.2, retry_timeout_s: 0.3, fence_margin_s: 0.4}"
                 ).lease
    assert lease.self_fence_after_s == pytest.approx(1.1)


@pytest.mark.parametrize("lease", [
    "lease: {ttl_s: 2.0, renew_interval_s: 0.5, retry_timeout_s: 0.75, fence_margin_s: 0.5}",  # 2.0 > 1.5
    "lease: {fence_margin_s: 1.5}",  # the margin eats the budget: 2.0 > 1.5
    "lease: {renew_interval_s: 2.5}",  # renewing too rarely: 4.0 > 2.5
])
def test_a_config_breaking_the_rule_is_refused_naming_it(tmp_path, lease):
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, lease)
    message = str(refused.value)
    assert "standby.yaml" in message and "lease" in message
    assert "renew_interval_s + 2 * retry_timeout_s" in message and "must not exceed ttl_s - fence_margin_s" in message
