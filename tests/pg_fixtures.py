"""pytest fixtures for a throwaway PostgreSQL: one cluster per session, one fresh database per test.

Use from a conftest or a test module:

    from tests.pg_fixtures import pg_cluster, pg_url  # noqa: F401

Without PostgreSQL server binaries the tests are skipped, except on CI (CI=true), where they fail: CI must never
turn a missing PostgreSQL into a green run.
"""
from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import pytest

from standby.store.pg_cluster import PgCluster, PgClusterError, find_pg_bin

MISSING = ("PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found via $PG_BINDIR, "
           "`pg_config --bindir`, PATH or /usr/lib/postgresql/*/bin")


def on_ci() -> bool:
    return os.environ.get("CI") == "true"


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL is missing; on CI, fail it instead."""
    if find_pg_bin() is None:
        if on_ci():
            pytest.fail(f"{MISSING}, and CI=true requires them: install PostgreSQL (see .ci/run).", pytrace=False)
        pytest.skip(f"{MISSING}; install PostgreSQL to run the postgres tests.")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL cluster for the whole session, stopped and removed at the end."""
    require_postgres()
    cluster = PgCluster(name="session")
    try:
        cluster.start()
    except PgClusterError as exc:
        # The binaries are there but the server would not start: that is a real failure everywhere.
        cluster.cleanup()
        pytest.fail(f"could not start a throwaway PostgreSQL cluster: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.cleanup()


def unique_db_name(test_name: str) -> str:
    """A valid, unique database name from a test's name (PostgreSQL identifiers are at most 63 bytes)."""
    stem = re.sub(r"[^a-z0-9_]+", "_", test_name.lower()).strip("_")[:40] or "test"
    return f"t_{stem}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pg_url(pg_cluster: PgCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """The SQLAlchemy URL of a fresh, empty database made for this test, dropped after it."""
    name = unique_db_name(request.node.name)
    url = pg_cluster.create_database(name)
    try:
        yield url
    finally:
        # FORCE ends sessions the test left open (an engine not disposed), so the drop never hangs. A test that
        # stopped the session's server has nothing left to drop.
        if pg_cluster.is_running():
            pg_cluster.drop_database(name)
