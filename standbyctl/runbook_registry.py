"""The composition root of the runbook engine: which actions a runbook may call, and the services they get.

The integrator registers the switchover's actions (cutover/actions/) in `build_registry`; each action receives
`build_services(...)`'s object as `ctx.services`. The engine never looks inside it.
"""
from __future__ import annotations

from dataclasses import dataclass

from cutover.runbook.actions import ActionRegistry, register_builtins
from cutover.witness.contract import Witness
from standby.settings import Settings


@dataclass(frozen=True)
class RunbookServices:
    """What actions may use: the settings (sites, URLs) and the witness (epoch, primary, lease)."""

    settings: Settings
    witness: Witness


def build_registry(settings: Settings, witness: Witness) -> ActionRegistry:
    """Every action a runbook may name. Built-ins: wait, check_http, fail."""
    registry = register_builtins(ActionRegistry())
    return registry


def build_services(settings: Settings, witness: Witness) -> RunbookServices:
    return RunbookServices(settings, witness)
