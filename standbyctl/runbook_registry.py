"""The composition root of the runbook engine: which actions a runbook may call, and the services they get.

Each action receives `build_services(...)`'s object as `ctx.services`; the engine never looks inside it. The
switchover's actions (cutover/actions/switchover.py) act on the sites of the settings and the witness through
`cutover.actions.sites.Sites`.
"""
from __future__ import annotations

from pathlib import Path

from cutover.actions import failback, failover, orgrestructure, switchover
from cutover.actions.sites import Sites
from cutover.runbook.actions import ActionRegistry, register_builtins
from cutover.witness.contract import Witness
from standby.settings import Settings


def build_registry(settings: Settings, witness: Witness) -> ActionRegistry:
    """Every action a runbook may name. Built-ins: wait, check_http, fail; then the switchover's, the failover's, the
    failback's and the org restructure's."""
    registry = switchover.register(register_builtins(ActionRegistry()))
    return orgrestructure.register(failback.register(failover.register(registry)))


def build_services(settings: Settings, witness: Witness, config_path: Path | None = None) -> Sites:
    """The actions' view of the sites and the witness. `config_path` lets an action start a replicator process with
    the same settings."""
    return Sites(settings, witness, config_path=config_path, partitions=settings.replication.partitions,
                 replicator_metrics_port=settings.replication.metrics_port)
