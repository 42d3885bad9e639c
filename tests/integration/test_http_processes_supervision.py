"""standby.http_processes.HttpProcesses with real spawned processes and a real listening socket: a process that exits
is replaced, a crash loop stops the supervisor naming the exit, and stop() ends every process (SIGTERM, then
SIGKILL for one that ignores it) and reports each one's exit."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from standby.http_processes import CrashLoop, HttpProcesses, bind_listener
from standby.processes import pid_alive


def exit_at_once(code: int, sockets) -> None:
    os._exit(code)


def sleep_on(ignore_term: bool, ready: str | None, sockets) -> None:
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if ready:
        open(ready, "w").close()
    while True:
        time.sleep(0.05)


@pytest.fixture
def listener():
    sock = bind_listener("127.0.0.1", 0)
    yield sock
    sock.close()


def test_processes_that_keep_exiting_stop_the_supervisor_naming_the_exit(listener):
    exited: list[int] = []
    supervisor = HttpProcesses(exit_at_once, (3,), [listener], 2, on_exit=exited.append, max_restarts=3)
    with pytest.raises(CrashLoop, match=r"exited 4 times within 60 s .*exit code 3"):
        supervisor.run()
    assert len(exited) >= 4 and not [pid for pid in exited if pid_alive(pid)]


def test_a_process_that_dies_is_replaced_and_stop_ends_them_all(listener):
    exited: list[int] = []
    supervisor = HttpProcesses(sleep_on, (False, None), [listener], 2, on_exit=exited.append).start()
    runner = threading.Thread(target=supervisor.run)
    runner.start()
    first = supervisor.pids
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while first[0] in supervisor.pids or len(supervisor.pids) != 2:
        assert time.monotonic() < deadline, "the dead process was not replaced"
        time.sleep(0.05)
    replaced = supervisor.pids
    supervisor.stop()
    runner.join(30)
    assert not runner.is_alive()
    assert first[0] in exited and set(replaced) <= set(exited)
    assert not [pid for pid in first + replaced if pid_alive(pid)]


def test_stop_kills_a_process_that_ignores_sigterm_after_the_grace(listener, tmp_path):
    exited: list[int] = []
    ready = tmp_path / "ignoring"
    supervisor = HttpProcesses(sleep_on, (True, str(ready)), [listener], 1, on_exit=exited.append,
                               grace_s=0.5).start()
    deadline = time.monotonic() + 30
    while not ready.exists():  # the child ignores SIGTERM from now on
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.02)
    pid = supervisor.pids[0]
    supervisor.stop()
    supervisor.run()
    assert exited == [pid] and not pid_alive(pid)
