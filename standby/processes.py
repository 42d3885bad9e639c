"""Is a process still there? One answer for everything that keeps pid files or owner records (throwaway
PostgreSQL clusters, a runbook run's driver, a replicator a runbook started)."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (a zombie no longer holds files, ports or shared memory)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: trust kill()


def command_line(pid: int) -> str:
    """The process's command line, space-joined ('' when it is gone or unknown): a pid may have been reused, so a
    pid file's owner is recognised by what it runs."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
