"""Keep-alive for Locust's FastHttpUser past 1,024 open sockets.

geventhttpclient's ConnectionPool checks a pooled socket before reusing it with `select.select([sock], [], [], 0)`.
select() cannot take a descriptor numbered 1,024 or above: it raises ValueError, which the check reads as "the
connection is dead", so it closes the socket and connects afresh. A load test past about 1,000 users (20x design
starts ~1,600) therefore reconnected on nearly every request of the users whose sockets were numbered high: measured
at 20x design, ~100 new TCP connections a second, each with a resolver round trip through gevent's thread pool, on
the machine whose capacity the run was measuring. Real clients keep their connections.

`use_poll_for_liveness()` replaces that one check with the same test done by poll(2), which has no descriptor limit.
The contract is the library's own: a pooled socket is alive when it is open and has nothing to read (an idle
keep-alive connection that has data waiting was closed by the server or is out of step, and is not reused)."""
from __future__ import annotations

import select

from geventhttpclient.connectionpool import ConnectionPool

try:  # Locust monkey-patches select; the check must not yield to the hub, so it uses the real poll
    from gevent.monkey import get_original
    _poll = get_original("select", "poll")
except (ImportError, AttributeError):  # pragma: no cover - gevent is a dependency of Locust
    _poll = select.poll

_NOT_IDLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL


def socket_is_idle(sock) -> bool:
    """True when `sock` is open and nothing can be read from it now (never blocks)."""
    if sock is None:
        return False
    try:
        fd = sock.fileno()
        if fd < 0:
            return False
        poller = _poll()
        poller.register(fd, _NOT_IDLE)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


def _is_socket_alive(_pool: ConnectionPool, sock) -> bool:
    return socket_is_idle(sock)


def use_poll_for_liveness() -> None:
    """Make every geventhttpclient ConnectionPool check reused sockets with poll(2). Idempotent."""
    ConnectionPool._is_socket_alive = _is_socket_alive
