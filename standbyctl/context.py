"""What every standbyctl command shares: the settings, loaded once, and clean failures."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from standby.settings import ConfigError, Settings, load_settings


class CliContext:
    def __init__(self, config: Path, overrides: dict):
        self.config_path, self.overrides = config, overrides
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_path, self.overrides)
            except ConfigError as exc:
                fail(str(exc), 2)
        return self._settings

    def check_site(self, site_id: str) -> None:
        if site_id not in self.settings.sites:
            fail(f"unknown site {site_id!r}; the settings ({self.config_path}) define: "
                 f"{', '.join(sorted(self.settings.sites))}", 2)


def fail(message: str, code: int = 1) -> None:
    """Print a one-line error for an operator and exit; never a stack trace."""
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def site_option(f):
    return click.option("--site", "site_id", required=True, metavar="ID", help="site id from the settings, e.g. A")(f)


pass_cli = click.make_pass_decorator(CliContext)


def open_site_database(cli: CliContext, site_id: str, *, writer: bool = True):
    """The site's engine, after checking its schema is at the newest revision (else a clear failure)."""
    from sqlalchemy.exc import OperationalError

    from standby.store.engine import make_engine
    from standby.store.migrate import current_revision, head_revision

    cli.check_site(site_id)
    engine = make_engine(cli.settings.database_url(site_id), writer=writer)
    try:
        revision = current_revision(engine)
    except OperationalError as exc:
        fail(f"cannot open site {site_id}'s database: {exc.orig}")
    if revision != head_revision():
        fail(f"site {site_id}'s schema is at {revision or 'nothing'}, not {head_revision()}; "
             f"run `standbyctl db upgrade --site {site_id}` first")
    return engine
