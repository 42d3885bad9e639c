"""Synchronous mode's two questions for one site (standby.api.sync.SyncPositions), asked of replication.progress,
the one owner of "how far has the standby applied": the site's own committed position on its change source to its
partner, and the partner's applied position of the stream site -> partner.

Both are opened on first use, i.e. only once the site is primary and a write waits: a site serving as standby never
opens a change source (on PostgreSQL that would create a replication slot nobody consumes, and the primary would keep
its WAL for it)."""
from __future__ import annotations

import threading

from replication.progress import applied_position, committed_position
from replication.sources import open_source, stream_name
from standby.settings import Settings
from standby.store.engine import make_engine


class SiteSyncPositions:
    """`committed()` and `applied()` of the stream `site_id` -> `partner`; `close()` releases what was opened."""

    def __init__(self, settings: Settings, site_id: str, partner: str):
        self.settings, self.site_id, self.partner = settings, site_id, partner
        self.stream = stream_name(site_id, partner)
        self._source = self._engine = None
        self._lock = threading.Lock()

    def committed(self) -> int:
        with self._lock:
            if self._source is None:
                self._source = open_source(self.settings.database_url(self.site_id), self.site_id, self.partner)
        return committed_position(self._source, timeout_s=self.settings.sync.standby_timeout_s)

    def applied(self) -> int | None:
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(self.settings.database_url(self.partner), pool_size=2, writer=False)
        return applied_position(self._engine, self.stream)

    def close(self) -> None:
        with self._lock:
            if self._source is not None:
                self._source.close()
            if self._engine is not None:
                self._engine.dispose()
            self._source = self._engine = None


def sync_positions(settings: Settings, site_id: str) -> SiteSyncPositions | None:
    """The positions synchronous mode asks about for `site_id`, or None when settings.sync pairs it with no site."""
    partner = settings.sync.standby_of(site_id)
    return SiteSyncPositions(settings, site_id, partner) if partner else None
