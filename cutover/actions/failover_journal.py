"""What a failover run journaled, read back for the failback and `standbyctl failover report`.

The failover runbook (runbooks/failover.yaml) journals each step's result in the witness; its `done` entry's detail
holds it under "result". Contract (CONTRACTS.md, "Failover run journal"):
- `divergence_of(witness, run_id)` -> Divergence: where the old primary's and the new primary's histories part
  (the standby's per-partition applied positions of the stream old -> new when it was stopped, from step
  `stop_stream`), the epoch the new primary took (`bump_epoch`) and where the new primary's own changes start
  (`reverse_start`; None while that step is not done). Raises NoDivergence (a sentence) for an unknown run, a run
  of another runbook, or a run whose `stop_stream` is not done yet.
- `latest_failover(witness, new_primary, old_primary)` -> the id of the newest DONE failover run from
  `old_primary` to `new_primary`, or None.
- `step_result(entries, step)` (pure) -> the result of the step's last `done` entry, or None. A repeated `done`
  (the witness may journal an append twice when its acknowledgement was lost) reads as the last one.
"""
from __future__ import annotations

from dataclasses import dataclass

from cutover.runbook.plan import RunStatus, StepPhase
from cutover.witness.contract import JournalEntry, Witness

RUNBOOK = "failover"


class NoDivergence(LookupError):
    """The run recorded no divergence point (not a failover, or stopped before `stop_stream` was done)."""


@dataclass(frozen=True)
class Divergence:
    old_primary: str
    new_primary: str
    stream: str  # old -> new, e.g. "A-to-B"
    partitions: int
    positions: dict[int, int]  # the standby's applied position per partition when the stream was stopped
    epoch: int | None  # the epoch the new primary was promoted under (None before bump_epoch is done)
    reverse_stream: str | None  # new -> old, e.g. "B-to-A"
    reverse_start: int | None  # the new primary's position before it took any write

    @property
    def applied(self) -> int:
        """The lowest partition position: every change at or below it reached the new primary."""
        return min(self.positions.values(), default=0)


def step_result(entries: list[JournalEntry], step: str) -> dict | None:
    """The journaled result of `step`'s last `done` entry, or None when the step is not done."""
    done = [e for e in entries if e.step == step and e.phase == StepPhase.DONE.value]
    return dict(done[-1].detail.get("result") or {}) if done else None


def divergence_from(params: dict, entries: list[JournalEntry]) -> Divergence:
    """Pure: the Divergence of a failover run from its parameters and journal (see `divergence_of`)."""
    stopped = step_result(entries, "stop_stream")
    if stopped is None:
        raise NoDivergence("the run has not recorded the standby's positions yet (step stop_stream is not done)")
    bumped = step_result(entries, "bump_epoch") or {}
    reverse = step_result(entries, "reverse_start") or {}
    return Divergence(
        old_primary=params["from"], new_primary=params["to"], stream=stopped["stream"],
        partitions=int(stopped["partitions"]),
        positions={int(part): int(position) for part, position in stopped["positions"].items()},
        epoch=bumped.get("epoch"), reverse_stream=reverse.get("stream"), reverse_start=reverse.get("position"))


def divergence_of(witness: Witness, run_id: str) -> Divergence:
    """The divergence point a failover run recorded; NoDivergence (a sentence) when it recorded none."""
    record = witness.run(run_id)
    if record is None:
        raise NoDivergence(f"no run {run_id!r} in the witness")
    if record.runbook != RUNBOOK:
        raise NoDivergence(f"run {run_id} is a {record.runbook} run, not a failover")
    return divergence_from(record.params, witness.entries(run_id))


def latest_failover(witness: Witness, new_primary: str, old_primary: str, *, limit: int = 200) -> str | None:
    """The newest completed failover from `old_primary` to `new_primary` among the last `limit` runs."""
    for record in witness.runs(limit):  # newest first
        if (record.runbook == RUNBOOK and record.status == RunStatus.DONE.value
                and record.params.get("from") == old_primary and record.params.get("to") == new_primary):
            return record.run_id
    return None
