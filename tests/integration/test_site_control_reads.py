"""The API's view of the site's control row on real SQLite: re-read off the event loop, the previous row answering
while the re-read is in flight, the first read's error surfaced."""
from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import event

from standby.api.app import SiteServices
from standby.api.metrics import SiteMetrics
from standby.domain.states import IntakeState, SiteRole
from standby.store.engine import make_engine
from standby.store.migrate import upgrade
from standby.store.site import init_site, set_intake


def _services(url: str) -> SiteServices:
    async def refuse(_command):
        raise AssertionError("no intake in this test")
    return SiteServices(site_id="A", read_engine=make_engine(url, writer=False), submit=refuse, tokens=None,
                        metrics=SiteMetrics("A"), control_ttl_s=0.0)


@pytest.fixture
def site_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'site-a.db'}"
    upgrade(url)
    engine = make_engine(url)
    init_site(engine, "A", SiteRole.PRIMARY, primary_site="A")
    engine.dispose()
    return url


def test_the_control_row_is_read_off_the_event_loop_and_the_previous_row_answers_meanwhile(site_url):
    services = _services(site_url)
    readers: list[int] = []
    event.listen(services.read_engine, "before_cursor_execute", lambda *a, **k: readers.append(threading.get_ident()))

    async def scenario():
        loop_thread = threading.get_ident()
        first = await services.current_control()  # nothing cached: waits for the read
        assert first.intake_state is IntakeState.OPEN
        writer = make_engine(site_url)
        set_intake(writer, "A", IntakeState.FROZEN)
        writer.dispose()
        meanwhile = await services.current_control()  # stale (TTL 0): a re-read starts, the cached row answers
        assert meanwhile is first
        latest = meanwhile
        for _ in range(200):
            await asyncio.sleep(0.01)
            latest = await services.current_control()
            if latest.intake_state is IntakeState.FROZEN:
                break
        assert latest.intake_state is IntakeState.FROZEN
        assert readers and loop_thread not in readers  # every read ran in a worker thread
    asyncio.run(scenario())
    services.read_engine.dispose()


def test_the_first_reads_error_reaches_the_caller(tmp_path):
    services = _services(f"sqlite:///{tmp_path / 'not-migrated.db'}")  # no site_control table

    async def scenario():
        with pytest.raises(Exception, match="site_control"):
            await services.current_control()
    asyncio.run(scenario())
    services.read_engine.dispose()
