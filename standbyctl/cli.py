"""standbyctl: the operator's command line. It is the composition root: it loads the settings once and wires the
parts together, the way patronictl sits on top of Patroni."""
from __future__ import annotations

from pathlib import Path

import click

from standbyctl.commands import bench, db, demo, loadtest, replicate, serve, status, tokens, witness
from standbyctl.context import CliContext

DEFAULT_CONFIG = Path("config/standby.yaml")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
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


for command in (db.db, db.seed, serve.serve, status.status, tokens.tokens, demo.demo, bench.bench,
                replicate.replicate, replicate.verify, loadtest.loadtest, witness.witness):
    main.add_command(command)
main.add_command(__import__("standbyctl.commands.runbook", fromlist=["runbook"]).runbook)
main.add_command(__import__("standbyctl.commands.front", fromlist=["front"]).front)
main.add_command(__import__("standbyctl.commands.watch", fromlist=["watch"]).watch)
main.add_command(__import__("standbyctl.commands.failover", fromlist=["failover"]).failover)


if __name__ == "__main__":
    main()
