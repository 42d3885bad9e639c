"""`standbyctl serve` as an operator starts it follows the witness: once the witness names another primary under a
newer epoch, the old primary refuses every write (`stale_epoch`, naming the new primary), even though no runbook has
touched its own control row (its lease keeper, renewing, soon fences the row itself: `fenced`, naming it too). This
is what keeps a replaced primary from taking writes."""
from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import func, select

from cutover.witness import open_witness
from standby.domain.states import IntakeState, Kind
from standby.store.engine import make_engine
from standby.store.schema import declarations, enterprises
from standby.store.site import read_control
from standbyctl.cli import main
from tests.conftest import REPO, free_port
from tests.integration.http_helpers import payload, refusal


def run(config, *args):
    result = CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def served_a(tmp_path):
    port = free_port()
    config = tmp_path / "standby.yaml"
    config.write_text(yaml.safe_dump({
        "root": str(REPO), "data_dir": str(tmp_path),
        "sites": {"A": {"site_digit": 1, "database_url": f"sqlite:///{tmp_path / 'a.db'}",
                        "http": {"host": "127.0.0.1", "port": port}},
                  "B": {"site_digit": 2, "database_url": f"sqlite:///{tmp_path / 'b.db'}", "http": {"port": 2}}},
        "auth": {"tokens_file": str(tmp_path / "tokens.yaml")},
        "witness_url": f"sqlite:///{tmp_path / 'witness.db'}",
        "ray": {"workers": 1},
    }))
    run(config, "db", "upgrade", "--site", "A", "--role", "primary", "--operator", "t")
    run(config, "db", "upgrade", "--site", "B", "--operator", "t")
    run(config, "seed", "--site", "A", "--enterprises", "200", "--officers-per-section", "1")
    token = run(config, "tokens", "issue", "--role", "operator", "--subject", "ops").stdout.strip().splitlines()[0]
    proc = subprocess.Popen([sys.executable, "-m", "standbyctl.cli", "--config", str(config), "serve", "--site", "A",
                             "--in-process"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        yield config, url, token, tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _declare(url: str, token: str, tax_code: str, tariff, key: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    return httpx.post(f"{url}/v1/declarations", json=payload(tariff, tax_code, kind=Kind.IMPORT), headers=headers,
                      timeout=30)


def test_a_primary_replaced_in_the_witness_refuses_writes_naming_the_new_primary(served_a, tariff):
    config, url, token, tmp = served_a
    engine = make_engine(f"sqlite:///{tmp / 'a.db'}", writer=False)
    with engine.connect() as conn:
        tax_code = conn.execute(select(enterprises.c.tax_code).where(
            enterprises.c.status == "active", enterprises.c.tax_debt_days <= 90).limit(1)).scalar()
    assert _declare(url, token, tax_code, tariff, "before-1").status_code == 201
    assert _wait_for(lambda: read_control(engine, "A").lease_until is not None), "the primary keeps no lease"

    witness = open_witness(f"sqlite:///{tmp / 'witness.db'}")
    assert witness.promote("B", expected_epoch=1).epoch == 2  # what a failover elsewhere would do first
    witness.close()
    deadline = time.monotonic() + 30
    # Two ways to hear of it: the authority poll (stale_epoch) and the lease keeper, whose next renewal is refused
    # under the newer epoch and fences the site's row (fenced); either refuses every write, naming B.
    while httpx.get(f"{url}/readyz").json().get("code") not in ("stale_epoch", "fenced"):
        assert time.monotonic() < deadline, "the site never heard of the new epoch"
        time.sleep(0.1)

    answer = _declare(url, token, tax_code, tariff, "after-1")
    error = refusal(answer, 503, answer.json()["error"]["code"])
    assert error["code"] in ("stale_epoch", "fenced") and error["primary_site"] == "B"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(declarations)).scalar() == 1, "nothing after the epoch"
    assert _wait_for(lambda: read_control(engine, "A").intake_state is IntakeState.FENCED), "never fenced itself"
    fenced = read_control(engine, "A")
    assert (fenced.fenced_epoch, fenced.primary_site, fenced.lease_until) == (2, "B", None)
    engine.dispose()


def _wait_for(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
