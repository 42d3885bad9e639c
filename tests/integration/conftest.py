"""Fixtures of the HTTP tests: one served primary site for the session, a client, row counts."""
from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select

from standby.store.schema import declarations, goods_lines


@pytest.fixture(scope="session")
def client(served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def rows(served):
    """rows() -> (declarations, goods lines) now in site A's database."""
    engine = served.db.engine(writer=False)

    def count() -> tuple[int, int]:
        with engine.connect() as conn:
            return (conn.execute(select(func.count()).select_from(declarations)).scalar_one(),
                    conn.execute(select(func.count()).select_from(goods_lines)).scalar_one())

    yield count
    engine.dispose()


@pytest.fixture(scope="session")
def enterprises(served) -> list[str]:
    return served.db.active_enterprises(60)



