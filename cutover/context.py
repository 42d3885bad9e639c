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
