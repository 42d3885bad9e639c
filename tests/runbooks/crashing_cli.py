"""`standbyctl` that kill -9s itself right after the N-th journal entry of a run is committed to the witness.

    python tests/runbooks/crashing_cli.py N --config CFG runbook run ...

It is standbyctl's own `runbook` command group under a `--config` option like standbyctl's (without the other
command groups, whose imports (Ray, Locust) cost more than a second per process), with one change:
Executor._append sends SIGKILL to its own process once the witness has returned seq N, so the death lands exactly
on a journal boundary (after an intent, before the act; after an outcome, before the next intent), which a kill
from outside could only hit by luck.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import click  # noqa: E402

from cutover.runbook.executor import Executor  # noqa: E402
from standbyctl.commands.runbook import runbook  # noqa: E402
from standbyctl.context import CliContext  # noqa: E402


@click.group()
@click.option("--config", "config", type=click.Path(path_type=Path), required=True)
@click.pass_context
def main(ctx: click.Context, config: Path) -> None:
    ctx.obj = CliContext(config, {})


main.add_command(runbook)


def _dies_after(target: int):
    original = Executor._append

    def append(self, run_id, step, phase, detail):
        seq = original(self, run_id, step, phase, detail)
        if seq == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return seq

    return append


if __name__ == "__main__":
    Executor._append = _dies_after(int(sys.argv[1]))
    main(sys.argv[2:], prog_name="standbyctl")
