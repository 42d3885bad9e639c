"""A standby site refuses writes and serves reads; the operational endpoints (/healthz, /readyz, /metrics, /openapi.json)."""
from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from standby.domain.states import SiteRole
from standby.store.schema import declarations, goods_lines
from tests.conftest import make_site_db, serve_site
from tests.integration.http_helpers import INTAKE_PATHS, get, payload, post, predeclare, refusal, register

# --- a standby site refuses writes -----------------------------------------------------------------------------------


def test_a_standby_site_refuses_writes_and_serves_reads(client, served, tariff, tmp_path_factory, org):
    standby_db = make_site_db(tmp_path_factory.mktemp("site-b"), org, site_id="B", role=SiteRole.STANDBY,
                              site_digit=2, enterprises_count=300)
    site_b = serve_site(standby_db)
    try:
        engine = standby_db.engine(writer=False)

        def b_rows() -> tuple[int, int]:
            with engine.connect() as conn:
                return (conn.execute(select(func.count()).select_from(declarations)).scalar_one(),
                        conn.execute(select(func.count()).select_from(goods_lines)).scalar_one())

        with httpx.Client(base_url=site_b.url, timeout=60) as b:
            tax_code = standby_db.active_enterprises(1)[0]
            before = b_rows()
            for token in (site_b.tokens.declarant(tax_code), site_b.tokens.operator()):
                error = refusal(post(b, "/v1/declarations", token, payload(tariff, tax_code)), 503, "not_primary")
                assert "site A" in error["message"] and "standby" in error["message"], error
            assert b_rows() == before
            engine.dispose()

            ops = site_b.tokens.operator()
            refusal(get(b, "/v1/declarations/299999999990", ops), 404, "not_found", "number")
            shown = get(b, "/v1/site", ops)
            assert shown.status_code == 200, shown.text
            assert shown.json() == {"site": "B", "role": "standby", "epoch": 1, "intake_state": "open",
                                    "primary_site": "A"}
            assert b.get("/healthz").json() == {"status": "ok", "site": "B"}
            not_ready = b.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["role"] == "standby" and not_ready.json()["ready"] is False
            gauges = b.get("/metrics").text
            assert 'clearance_site_role{role="standby",site="B"} 1.0' in gauges

        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["role"] == "primary" and ready.json()["ready"] is True
    finally:
        site_b.stop()


# --- operations ------------------------------------------------------------------------------------------------------


def test_healthz(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "ok", "site": "A"}


def test_metrics_in_prometheus_text_format(client, served, tariff, enterprises):
    tax_code = enterprises[11]
    token = served.tokens.declarant(tax_code)
    register(client, token, predeclare(client, token, payload(tariff, tax_code))["number"])
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    for name in ("clearance_requests_total", "clearance_decision_latency_seconds_bucket",
                 "clearance_batch_size_bucket", "clearance_intake_state", "clearance_site_role",
                 "clearance_site_epoch", "clearance_worker_restarts_total", "clearance_lane_decisions_total",
                 "clearance_request_latency_seconds_bucket", "clearance_http_errors_total"):
        assert name in text, name
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def total(name: str, **labels) -> float:
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    assert total("clearance_decision_latency_seconds_count") > 0
    assert total("clearance_requests_total", op="register", outcome="accepted") > 0
    assert total("clearance_batch_size_count") > 0
    assert total("clearance_intake_state", site="A", state="open") == 1
    assert total("clearance_intake_state", site="A", state="frozen") == 0
    assert total("clearance_site_role", site="A", role="primary") == 1
    assert total("clearance_site_epoch", site="A") == 1


def test_metrics_show_the_changes_no_standby_has_taken(client, served, tariff, enterprises):
    """No replicator consumes this site, so every change it captured waits in change_log: /metrics says how many
    and how old the oldest is (what ChangeLogNotConsumed alerts on)."""
    from sqlalchemy import func, select

    from standby.store.schema import change_log

    tax_code = enterprises[12]
    token = served.tokens.declarant(tax_code)
    predeclare(client, token, payload(tariff, tax_code))
    engine = served.db.engine(writer=False)

    def captured() -> int:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(change_log)).scalar()

    before = captured()
    text = client.get("/metrics").text
    after = captured()
    engine.dispose()
    samples = {s.name: s for family in text_string_to_metric_families(text) for s in family.samples
               if s.name.startswith("clearance_change_log_")}
    assert 0 < before <= samples["clearance_change_log_pending_rows"].value <= after
    assert samples["clearance_change_log_pending_rows"].labels == {"site": "A"}
    assert 0 < samples["clearance_change_log_oldest_seconds"].value < 24 * 3600


def test_openapi_lists_the_intake_paths(client):
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    paths = resp.json()["paths"]
    for path in INTAKE_PATHS:
        assert path in paths, path
    assert "post" in paths["/v1/declarations"]
    assert "/metrics" not in paths
