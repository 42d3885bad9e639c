"""Opens the right ChangeSource for a primary's database and checks both sides before a stream starts."""
from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from replication.changes import ChangeSource
from replication.errors import SchemaMismatch
from standby.store.migrate import current_revision


STREAM_JOIN = "-to-"


def stream_name(source_site: str, target_site: str) -> str:
    """The one name of the stream from `source_site` to `target_site` ("A-to-B"): the key of its positions in the
    target's replication_state and the label of its metrics. Site ids must not contain "-to-"."""
    if STREAM_JOIN in source_site or STREAM_JOIN in target_site or not source_site or not target_site:
        raise ValueError(f"site ids {source_site!r} and {target_site!r} cannot name a stream")
    return f"{source_site}{STREAM_JOIN}{target_site}"


def stream_sites(stream: str) -> tuple[str, str]:
    """(source site, target site) of a name made by `stream_name`."""
    parts = stream.split(STREAM_JOIN)
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{stream!r} is not a stream name (SOURCE{STREAM_JOIN}TARGET)")
    return parts[0], parts[1]


def slot_name(source_site: str, target_site: str) -> str:
    """PostgreSQL slot names allow lower-case letters, digits and underscores."""
    return f"standby_{source_site}_to_{target_site}".lower()


def open_source(url: str, source_site: str, target_site: str) -> ChangeSource:
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        from replication.sqlite_source import SqliteChangeSource

        return SqliteChangeSource(url)
    if backend == "postgresql":
        from replication.pg_source import PgChangeSource

        source = PgChangeSource(url, slot_name(source_site, target_site))
        source.create_slot(exists_ok=True)
        return source
    raise ValueError(f"no change source for {backend} databases (SQLite and PostgreSQL are supported)")


def check_revisions(primary: Engine, standby: Engine) -> str:
    """Both sides at the same Alembic revision, or SchemaMismatch saying which is where."""
    a, b = current_revision(primary), current_revision(standby)
    if a is None or a != b:
        raise SchemaMismatch(f"the primary's schema is at {a or 'nothing'} and the standby's at {b or 'nothing'}; "
                             "migrate both to the same revision (standbyctl db upgrade) before replicating")
    return a
