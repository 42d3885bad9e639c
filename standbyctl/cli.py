"""standbyctl: the operator's command line. It is the composition root: it loads the settings once and wires the
parts together, the way patronictl sits on top of Patroni."""
from __future__ import annotations

from pathlib import Path

import click

import importlib

from standbyctl.context import CliContext

DEFAULT_CONFIG = Path("config/standby.yaml")

# Each command's module is imported when the command is used (or `--help` lists them): an operator's `runbook
# resume` should not wait for Ray, FastAPI and Locust to load. Name -> "module:attribute".
COMMANDS = {
    "db": "standbyctl.commands.db:db", "seed": "standbyctl.commands.db:seed",
    "serve": "standbyctl.commands.serve:serve",
    "status": "standbyctl.commands.status:status", "tokens": "standbyctl.commands.tokens:tokens",
    "demo": "standbyctl.commands.demo:demo", "bench": "standbyctl.commands.bench:bench",
    "replicate": "standbyctl.commands.replicate:replicate", "verify": "standbyctl.commands.replicate:verify",
    "loadtest": "standbyctl.commands.loadtest:loadtest", "witness": "standbyctl.commands.witness:witness",
    "runbook": "standbyctl.commands.runbook:runbook", "front": "standbyctl.commands.front:front",
    "watch": "standbyctl.commands.watch:watch", "failover": "standbyctl.commands.failover:failover",
    "orgchange": "standbyctl.commands.orgchange:orgchange", "drill": "standbyctl.commands.drill:drill",
}


class LazyCommands(click.Group):
    """A group whose subcommands are imported on first use (click's documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attribute = target.split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyCommands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--config", "config", type=click.Path(path_type=Path), default=DEFAULT_CONFIG, show_default=True,
              envvar="STANDBY_CONFIG", help="settings file (YAML); relative paths in it resolve against its root")
@click.option("--ray-address", default=None, help="join this Ray cluster (e.g. 'auto') instead of a local Ray")
@click.pass_context
def main(ctx: click.Context, config: Path, ray_address: str | None) -> None:
    """Operate the standby clearance sites.

    \b
    First run on a fresh machine (embedded default: SQLite files, local Ray):
      standbyctl db upgrade --site A --role primary   create site A's database at the newest schema
      standbyctl seed --site A                        reference data + 106,000 synthetic enterprises
      standbyctl tokens issue --role operator --subject alice
      standbyctl serve --site A                       HTTP API on the port in the settings
      standbyctl status                               role, epoch, intake and counts of every site
    Or `standbyctl demo` for all of it plus a few hundred declarations through the HTTP API.
    """
    ctx.obj = CliContext(config, {"ray": {"address": ray_address}} if ray_address else {})


if __name__ == "__main__":
    main()
