"""standbyctl db … and standbyctl seed."""
from __future__ import annotations

import time

import click
from sqlalchemy.exc import OperationalError

from standbyctl.context import CliContext, fail, open_site_database, pass_cli, site_option
from standby.domain.risk import load_risk_rules
from standby.domain.states import SiteRole
from standby.domain.tariff import load_tariff
from standby.reference.orgdata import OrgDataError, load_org_data
from standby.store.engine import make_engine
from standby.store.migrate import current_revision, head_revision, upgrade
from standby.store.seed import seed as run_seed
from standby.store.retention import count_older_than, prune_idempotency
from standby.store.site import init_site


@click.group()
def db() -> None:
    """Create and migrate a site's database (Alembic)."""


@db.command("upgrade")
@site_option
@click.option("--role", type=click.Choice([r.value for r in SiteRole]), default=None,
              help="role written to a NEW database's control row (default: primary for the first site in the "
                   "settings, standby for the others); an existing row is never changed here — use a runbook")
@pass_cli
def db_upgrade(cli: CliContext, site_id: str, role: str | None) -> None:
    """Migrate SITE's database to the newest schema and create its control row if it has none."""
    cli.check_site(site_id)
    settings = cli.settings
    url = settings.database_url(site_id)
    _ensure_parent(url)
    try:
        upgrade(url)
    except OperationalError as exc:
        fail(f"cannot migrate site {site_id}'s database ({_safe(url)}): {exc.orig}")
    engine = make_engine(url)
    first = next(iter(settings.sites))
    wanted = SiteRole(role) if role else (SiteRole.PRIMARY if site_id == first else SiteRole.STANDBY)
    control = init_site(engine, site_id, wanted, primary_site=first)
    click.echo(f"site {site_id}: schema at {current_revision(engine)}; role {control.role.value}, "
               f"epoch {control.epoch}, intake {control.intake_state.value}")
    if role and control.role.value != role:
        click.secho(f"note: the existing control row says {control.role.value}; roles change only through a runbook",
                    fg="yellow")


@db.command("current")
@site_option
@pass_cli
def db_current(cli: CliContext, site_id: str) -> None:
    """Show SITE's schema revision beside the newest one."""
    cli.check_site(site_id)
    engine = make_engine(cli.settings.database_url(site_id))
    current, head = current_revision(engine), head_revision()
    click.echo(f"site {site_id}: {current or 'empty (run db upgrade)'}; newest {head}")
    if current != head:
        raise SystemExit(1)


@db.command("prune")
@site_option
@click.option("--keys-older-than-days", type=click.FloatRange(1, 3650), required=True,
              help="delete Idempotency-Key records older than this; a retry older than it counts as a new request")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@pass_cli
def db_prune(cli: CliContext, site_id: str, keys_older_than_days: float, yes: bool) -> None:
    """Delete old idempotency records on SITE (the primary; the deletes replicate). The audit log is kept."""
    engine = open_site_database(cli, site_id)
    cutoff = time.time() - keys_older_than_days * 86_400
    due = count_older_than(engine, cutoff)
    if not due:
        click.echo(f"site {site_id}: no idempotency records older than {keys_older_than_days:g} days")
        return
    if not yes and not click.confirm(f"delete {due:,} idempotency records older than {keys_older_than_days:g} days "
                                     f"on site {site_id}? This cannot be undone", default=False):
        fail("nothing deleted", 1)
    click.echo(f"site {site_id}: deleted {prune_idempotency(engine, cutoff):,} idempotency records")


@click.command("seed")
@site_option
@click.option("--enterprises", "enterprises_count", type=click.IntRange(0, 10_000_000), default=106_000,
              show_default=True, help="synthetic enterprises (2024: ~106,000 declared goods)")
@click.option("--officers-per-section", type=click.IntRange(1, 200), default=6, show_default=True,
              help="officers registered per office and section (01 import, 02 export)")
@click.option("--declarations", "declarations_count", type=click.IntRange(0, 50_000_000), default=0,
              show_default=True, help="historical cleared declarations to add, for benchmarks")
@click.option("--seed", "rng_seed", type=int, default=2025, show_default=True, help="random seed (reproducible)")
@pass_cli
def seed(cli: CliContext, site_id: str, enterprises_count: int, officers_per_section: int, declarations_count: int,
         rng_seed: int) -> None:
    """Load reference data (both maps, 20 customs branches, offices) and a synthetic population into SITE.

    Safe to rerun: what is already there is not added again (historical declarations are added each time)."""
    settings = cli.settings
    engine = open_site_database(cli, site_id)
    try:
        org = load_org_data(settings.path(settings.reference.org_dir))
    except OrgDataError as exc:
        fail(str(exc), 2)
    tariff = load_tariff(settings.path(settings.reference.tariffs)) if declarations_count else None
    rules = load_risk_rules(settings.path(settings.reference.risk_rules)) if declarations_count else None
    started = time.monotonic()
    report = run_seed(engine, org, enterprises_count=enterprises_count, officers_per_section=officers_per_section,
                      declarations_count=declarations_count, tariff=tariff, rules=rules,
                      site_digit=settings.site(site_id).site_digit, rng_seed=rng_seed, progress=_progress())
    click.echo(f"\nsite {site_id} seeded in {time.monotonic() - started:.1f}s: reference {report.reference or 'already there'}; "
               f"enterprises +{report.enterprises}; officers +{report.officers}; declarations +{report.declarations}")


def _progress():
    last = {"at": 0.0}

    def show(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last["at"] > 0.5:
            click.echo(f"\r  {stage}: {done:,}/{total:,} ({100 * done // max(total, 1)}%)", nl=done == total)
            last["at"] = now
    return show


def _ensure_parent(url: str) -> None:
    from pathlib import Path

    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
