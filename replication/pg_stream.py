"""A logical replication slot's change stream over PostgreSQL's streaming replication protocol (START_REPLICATION).

Spoken through psycopg's libpq wrapper (`psycopg.pq`, the driver the engine already uses), not psycopg2's
LogicalReplicationConnection: psycopg2 answers the server's keepalives itself and then moves the flush position it
reports up to the server's end of WAL whenever the flush position we gave is at or past the start of the last
message received. A wal2json format-1 message starts at its transaction's BEGIN, which lies below an earlier
transaction's commit when the two overlapped, so psycopg2 would confirm the slot past a transaction received but
not yet applied, and a kill -9 then would lose it. Here the slot's flush position is only ever what `confirm` was
given; the server's keepalives are answered with it.
"""
from __future__ import annotations

import select
import struct
import threading
import time

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

# Message tags inside the COPY BOTH stream (PostgreSQL protocol, "Streaming Replication Protocol").
WAL_DATA, KEEPALIVE, STANDBY_STATUS = ord("w"), ord("k"), b"r"
WAL_DATA_HEADER = struct.Struct(">QQq")  # data start, server WAL end, send time
KEEPALIVE_BODY = struct.Struct(">QqB")  # server WAL end, send time, reply requested
STATUS_BODY = struct.Struct(">QQQqB")  # written, flushed, applied, send time, reply requested
PG_EPOCH_UNIX_S = 946_684_800  # 2000-01-01 00:00 UTC, the epoch of the protocol's timestamps
# The walsender formats values with its session's settings: pin them to what pg_wal2json parses.
SESSION_OPTIONS = "-c DateStyle=ISO,YMD -c TimeZone=UTC -c extra_float_digits=1"


class StreamError(Exception):
    """The stream could not start or broke. `sqlstate` is the server's error code, None when the connection itself
    failed (refused, reset, closed); `broken` says the connection is gone."""

    def __init__(self, message: str, sqlstate: str | None, broken: bool):
        super().__init__(message)
        self.sqlstate, self.broken = sqlstate, broken


def conninfo(host: str | None, port: int | None, user: str | None, password: str | None, dbname: str | None,
             extra: dict | None = None) -> str:
    """A libpq connection string for a logical replication connection to `dbname`."""
    params = {k: v for k, v in {"host": host, "port": port, "user": user, "password": password,
                                "dbname": dbname}.items() if v is not None}
    return make_conninfo(**{**(extra or {}), **params, "replication": "database", "options": SESSION_OPTIONS,
                            "connect_timeout": 10, "application_name": "standby-replication"})


class WalStream:
    """One START_REPLICATION of a logical slot from its confirmed position. `next_message` returns the plugin's
    messages in the order the server decoded them (commit order); `confirm` tells the server the standby holds
    everything up to a position (the slot's confirmed_flush_lsn moves there; WAL before it may be freed).
    `server_end` is the server's WAL position when it last said where it was (a keepalive): every message for WAL
    below it has been received by then. `next_message` and `confirm` may be called from different threads."""

    def __init__(self, info: str, slot: str, options: dict[str, str]):
        self._lock = threading.Lock()
        self.server_end = 0
        self.last_heard = time.monotonic()  # when the server last sent anything (data or keepalive)
        self.broken = False  # set once the connection failed: the stream is of no further use
        self._confirmed = 0
        self._conn = pq.PGconn.connect(info.encode())
        if self._conn.status != pq.ConnStatus.OK:
            message = _text(self._conn.error_message)
            self._conn.finish()
            raise StreamError(message, None, True)
        opts = ", ".join(f'"{k}" \'{v.replace(chr(39), chr(39) * 2)}\'' for k, v in options.items())
        result = self._conn.exec_(f'START_REPLICATION SLOT "{slot}" LOGICAL 0/0 ({opts})'.encode())
        if result.status != pq.ExecStatus.COPY_BOTH:
            error = StreamError(_text(result.get_error_message() or self._conn.error_message),
                                _sqlstate(result), self._conn.status != pq.ConnStatus.OK)
            self._conn.finish()
            raise error
        self._conn.nonblocking = 1

    def next_message(self, timeout_s: float) -> tuple[int, bytes] | None:
        """(WAL start, payload) of the next plugin message, or None if none came within `timeout_s` (0: do not
        wait). Keepalives are handled here: `server_end` moves, and a reply is sent when the server asks."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                nbytes, data = self._read()
            if nbytes > 0:
                self.last_heard = time.monotonic()
                tag = data[0]
                if tag == WAL_DATA:
                    start, _end, _sent = WAL_DATA_HEADER.unpack_from(data, 1)
                    return start, bytes(data[1 + WAL_DATA_HEADER.size:])
                if tag == KEEPALIVE:
                    end, _sent, reply = KEEPALIVE_BODY.unpack_from(data, 1)
                    self.server_end = max(self.server_end, end)
                    if reply:
                        self._status(reply=False)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([self._conn.socket], [], [], left)

    def confirm(self, position: int) -> None:
        """Report `position` as written and flushed by the standby; lower positions than before change nothing."""
        self._confirmed = max(self._confirmed, position)
        self._status(reply=False)

    def ask_where(self) -> None:
        """Ask the server for a keepalive: `server_end` then moves to where its decoding is."""
        self._status(reply=True)

    def close(self) -> None:
        with self._lock:
            self._conn.finish()  # a second call does nothing

    # --- the wire ---------------------------------------------------------------------------------------------

    def _read(self) -> tuple[int, memoryview]:
        try:
            nbytes, data = self._conn.get_copy_data(1)
            if nbytes == 0:  # nothing buffered: take what the socket holds, then look again
                self._conn.consume_input()
                nbytes, data = self._conn.get_copy_data(1)
        except psycopg.Error as exc:  # reset, closed, or a server error on the wire
            self.broken = True
            raise StreamError(str(exc), None, True) from exc
        if nbytes == -1:  # the server ended the stream: its reason is in the result
            self.broken = True
            result = self._conn.get_result()
            raise StreamError(_text((result and result.get_error_message()) or self._conn.error_message)
                              or "the server ended the replication stream", _sqlstate(result), True)
        return nbytes, data

    def _status(self, reply: bool) -> None:
        now_us = int((time.time() - PG_EPOCH_UNIX_S) * 1_000_000)
        body = STANDBY_STATUS + STATUS_BODY.pack(self._confirmed, self._confirmed, self._confirmed, now_us, reply)
        with self._lock:
            try:
                self._conn.put_copy_data(body)
                while self._conn.flush() == 1:  # the socket is full: wait until it takes the rest
                    select.select([], [self._conn.socket], [], 1.0)
            except psycopg.Error as exc:
                self.broken = True
                raise StreamError(str(exc), None, True) from exc


def _sqlstate(result) -> str | None:
    if result is None:
        return None
    code = result.error_field(pq.DiagnosticField.SQLSTATE)
    return code.decode() if code else None


def _text(message) -> str:
    return (message.decode(errors="replace") if isinstance(message, bytes) else str(message or "")).strip()
