"""A step for test runbooks: an idempotent effect on files, so a re-run after kill -9 does no harm.

    effect.py DIR NAME           record an invocation, then add NAME to DIR/ledger.log unless it is there already
    effect.py DIR NAME --undo    remove NAME from the ledger (idempotent too) and record the undo in DIR/undo.log
    effect.py DIR NAME --fail    record the invocation and exit 3

Before the effect, it creates DIR/started-NAME and, while DIR/hold-NAME exists, waits (a test kills the runbook
process at that moment: mid-step, intent journaled, effect not yet done). Prints a JSON object (the step result).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one small write: all or nothing under a kill
    finally:
        os.close(fd)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def main(folder: str, name: str, mode: str = "") -> int:
    root = Path(folder)
    _append(root / "invocations.log", f"{mode or 'do'} {name}")
    (root / f"started-{name}").touch()
    deadline = time.monotonic() + 60
    while (root / f"hold-{name}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    ledger = root / "ledger.log"
    if mode == "--fail":
        print(f"step {name} fails on purpose", file=sys.stderr)
        return 3
    if mode == "--undo":
        kept = [line for line in _lines(ledger) if line != name]
        if len(kept) != len(_lines(ledger)):
            tmp = root / "ledger.tmp"
            tmp.write_text("".join(f"{line}\n" for line in kept))
            os.replace(tmp, ledger)
            _append(root / "undo.log", name)
        print(json.dumps({"undone": name}))
        return 0
    new = name not in _lines(ledger)
    if new:
        _append(ledger, name)
    print(json.dumps({"effect": name, "new": new, "count": len(_lines(ledger))}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
