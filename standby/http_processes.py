"""Several HTTP processes for one site: one listening socket, N processes accepting on it, kept at N.

The site's process (the supervisor) binds the socket, then starts N processes with multiprocessing's spawn (as
uvicorn's own `--workers` does), each running `target(*args, sockets)`; the kernel hands each new connection to one
of the processes accepting on the shared socket. Contract of `HttpProcesses`:
- `run()` blocks until `stop()` is called (from a signal handler, say): a process that exits meanwhile is reported
  to `on_exit(pid)` and replaced by a new one; more than `max_restarts` replacements within `restart_window_s`
  means something is wrong with every process (a bad setting, a dead database): `run` stops them all and raises
  CrashLoop, naming the last exit.
- `stop()` makes `run` send SIGTERM to every process (uvicorn then finishes the requests in flight), wait up to
  `grace_s`, SIGKILL any left, report each to `on_exit` and return.
- A process started here dies with the supervisor (`die_with_parent`, which the target calls first), so a kill -9 of
  the supervisor leaves none behind.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class CrashLoop(RuntimeError):
    """The site's HTTP processes keep exiting: more replacements than allowed in the window."""


def bind_listener(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The site's listening socket, bound and listening, shared by its HTTP processes. OSError if the address is
    taken or cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when its parent dies (prctl PR_SET_PDEATHSIG); if the parent is already gone,
    exit now. SIGKILL, not SIGTERM: the site's workers and its Ray die with the supervisor, so there is nothing to
    finish gracefully, and a process still starting up (blocked in a Ray call) would not act on SIGTERM for minutes.
    Elsewhere than on Linux nothing is asked, and a supervisor killed with -9 leaves its processes."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the request was in place
        os._exit(1)


class HttpProcesses:
    """N processes running `target(*args, sockets)`, kept at N; see the module's contract."""

    def __init__(self, target: Callable, args: tuple, sockets: list[socket.socket], count: int, *,
                 on_exit: Callable[[int], None] = lambda pid: None, max_restarts: int = 5,
                 restart_window_s: float = 60.0, grace_s: float = 30.0, name: str = "http",
                 clock: Callable[[], float] = time.monotonic):
        if count < 1:
            raise ValueError(f"a site needs at least one HTTP process, not {count}")
        self.target, self.args, self.sockets, self.count = target, args, sockets, count
        self.on_exit, self.max_restarts, self.restart_window_s = on_exit, max_restarts, restart_window_s
        self.grace_s, self.name, self.clock = grace_s, name, clock
        self._context = multiprocessing.get_context("spawn")
        self._processes: list = []
        self._restarts: deque[float] = deque()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def start(self) -> "HttpProcesses":
        self._processes = [self._spawn(i) for i in range(self.count)]
        return self

    def run(self) -> None:
        """Supervise until `stop()`; see the module's contract."""
        if not self._processes:
            self.start()
        try:
            while not self._stopping:
                ready = wait([p.sentinel for p in self._processes] + [self._wake_r])
                if self._stopping:
                    break
                for index, process in enumerate(self._processes):
                    if process.sentinel in ready:
                        self._replace(index, process)
        finally:
            self._stop_all()

    def stop(self) -> None:
        """Make `run` stop every process and return; safe from a signal handler."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # already stopped: the pipe is closed
            pass

    def _spawn(self, index: int):
        process = self._context.Process(target=self.target, args=(*self.args, self.sockets),
                                        name=f"{self.name}-{index}", daemon=False)
        process.start()
        return process

    def _replace(self, index: int, process) -> None:
        process.join()
        self.on_exit(process.pid)
        exit_code = process.exitcode
        how = f"signal {-exit_code}" if exit_code is not None and exit_code < 0 else f"exit code {exit_code}"
        now = self.clock()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > self.restart_window_s:
            self._restarts.popleft()
        if len(self._restarts) > self.max_restarts:
            raise CrashLoop(f"{self.name} processes exited {len(self._restarts)} times within "
                            f"{self.restart_window_s:g} s (the last, pid {process.pid}, with {how}); stopping")
        log.warning("%s process %d (pid %d) ended with %s; starting another", self.name, index, process.pid, how)
        self._processes[index] = self._spawn(index)

    def _stop_all(self) -> None:
        for process in self._processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = self.clock() + self.grace_s
        for process in self._processes:
            process.join(max(0.0, deadline - self.clock()))
            if process.is_alive():
                process.kill()
                process.join()
            self.on_exit(process.pid)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
