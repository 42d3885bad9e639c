"""The switchover runbook end to end on PostgreSQL: sites A and B and the witness each in its own database of the
suite's throwaway cluster, the sites served over HTTP, the front, a replicator process A → B (logical decoding from
a replication slot), and declarants writing through the front the whole time. A → B and back again: nothing
acknowledged is lost or doubled, no client sees an error, verify finds the sites equal, and the witness and the
sites' control rows end where a switchover puts them."""
from __future__ import annotations

import time
import uuid

import pytest
import ray
from click.testing import CliRunner

from cutover.runbook.plan import RunStatus
from standby.domain.states import IntakeState, SiteRole
from standbyctl.cli import main
from tests.integration.switchover_rig import Traffic, build_rig, ledger_problems, running_replicators
from tests.pg_fixtures import pg_cluster  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.ray]


def switch(rig, source: str, target: str, attempts: int = 3):
    # The freeze budget is generous: the estimate comes from the replication lag, which on a shared 2-core machine
    # is timing; refusing an over-budget freeze is test_switchover.py's subject, not this test's.
    # Under load on PostgreSQL the preflight `verify` named the newest audit_log rows "missing on standby" now and
    # then: its settle returned before async commits not yet flushed were decodable (fixed in PgChangeSource.committed
    # after this was written). A refused run changes nothing and an operator runs it again: so does this test, at most
    # attempts - 1 times, asserting that each refusal left the source primary at its epoch.
    epoch = rig.witness().state().epoch
    for _ in range(attempts):
        result = CliRunner().invoke(main, ["--config", str(rig.config), "runbook", "run", "switchover",
                                           "--param", f"from={source}", "--param", f"to={target}", "--yes",
                                           "--param", "freeze_budget_s=5", "--param", "max_lag_s=5",
                                           "--operator", "test-operator", "--metrics-port", "0"])
        refused_by_verify = result.exit_code == 1 and "switchover.verify_clean" in result.output and \
            "catch_up" not in result.output
        if not refused_by_verify:
            return result
        state, control = rig.witness().state(), rig.control(source)
        assert (state.primary_site, state.epoch) == (source, epoch), "a refused switchover changed the witness"
        assert (control.role, control.intake_state) == (SiteRole.PRIMARY, IntakeState.OPEN), result.output
        time.sleep(2.0)
    return result


@pytest.fixture
def rig(tmp_path, org, ray_session, pg_cluster):  # noqa: F811
    names = {part: f"sw_{uuid.uuid4().hex[:8]}_{part}" for part in ("a", "b", "witness")}
    urls = {part: pg_cluster.create_database(name) for part, name in names.items()}
    rig = None
    try:
        # The replicators the runbook starts join the session's Ray rather than start one each (seconds).
        rig = build_rig(tmp_path, org, enterprises_count=300, site_urls={"A": urls["a"], "B": urls["b"]},
                        witness_url=urls["witness"], ray_address=ray.get_runtime_context().gcs_address)
        yield rig
    finally:
        if rig is not None:
            rig.close()
        for name in names.values():
            if pg_cluster.is_running():
                pg_cluster.drop_database(name)


def _assert_switched(rig, primary: str, old: str, epoch: int) -> None:
    witness = rig.witness()
    try:
        state = witness.state()
        last = witness.runs(1)[0]
    finally:
        witness.close()
    assert (state.primary_site, state.epoch) == (primary, epoch)
    assert (last.params["from"], last.params["to"], last.status) == (old, primary, RunStatus.DONE.value)
    new, fenced = rig.control(primary), rig.control(old)
    assert (new.role, new.intake_state, new.epoch) == (SiteRole.PRIMARY, IntakeState.OPEN, epoch)
    assert (fenced.role, fenced.intake_state, fenced.primary_site) == (SiteRole.STANDBY, IntakeState.FENCED, primary)


def _only_replicator(rig, stream: str, timeout_s: float = 60) -> set[str]:
    """The replicators running once the finished stream's process has exited by itself (it stops when its source
    is fenced and everything is applied)."""
    deadline = time.monotonic() + timeout_s
    while set(running_replicators(rig.tmp)) != {stream} and time.monotonic() < deadline:
        time.sleep(0.1)
    return set(running_replicators(rig.tmp))


def test_switchover_and_back_on_postgres_under_load_loses_doubles_and_refuses_nothing(rig, tariff):
    assert rig.settings.witness_url.startswith("postgresql")
    assert all(rig.settings.database_url(s).startswith("postgresql") for s in ("A", "B"))
    traffic = Traffic(rig.front_url, rig.tokens, rig.tax_codes(), tariff, clients=3).start()
    try:
        time.sleep(1.0)
        there = switch(rig, "A", "B")
        assert there.exit_code == 0, there.output
        _assert_switched(rig, "B", "A", epoch=2)
        assert _only_replicator(rig, "B-to-A") == {"B-to-A"}, "only the reverse stream runs after the switch"
        time.sleep(1.0)  # B takes writes on its own for a while, replicated back to A
        back = switch(rig, "B", "A")
        assert back.exit_code == 0, back.output
        _assert_switched(rig, "A", "B", epoch=3)
        time.sleep(0.5)
    finally:
        ledger = traffic.stop()
    assert ledger.errors == [], f"clients saw errors through the front: {ledger.errors[:5]}"
    assert len(ledger.acknowledged) > 50
    assert {number[0] for number in ledger.acknowledged} == {"1", "2"}, \
        "both sites took writes (numbers start with the issuing site's digit)"
    rig.wait_caught_up("A", "B")
    assert ledger_problems(ledger, rig.stored("A")) == []
    report = rig.verify("A", "B")
    assert report.ok, "\n".join(report.summary())
    assert _only_replicator(rig, "A-to-B") == {"A-to-B"}, "only the stream from the current primary runs"
