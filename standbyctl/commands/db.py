"""standbyctl db … and standbyctl seed."""
from __future__ import annotations

import getpass
import time

import click
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from cutover.witness import AuditRecord, Witness, WitnessState, WitnessUnavailable
from cutover.witness.roles import InitialRole, KeepExisting, Refusal, initial_role
from standbyctl.commands.witness import open_settings_witness
from standbyctl.context import CliContext, fail, open_site_database, pass_cli, site_option
from standby.domain.risk import load_risk_rules
from standby.domain.states import SiteRole
from standby.domain.tariff import load_tariff
from standby.reference.orgdata import OrgDataError, load_org_data
from standby.store.engine import make_engine
from standby.store.migrate import current_revision, head_revision, upgrade
from standby.store.seed import seed as run_seed
from standby.store.retention import count_older_than, prune_idempotency
from standby.settings import sqlite_file
from standby.store.site import init_site, read_control


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment; the audit still needs a name
        return "unknown"


@click.group()
def db() -> None:
    """Create and migrate a site's database (Alembic)."""


@db.command("upgrade")
@site_option
@click.option("--role", type=click.Choice([r.value for r in SiteRole]), default=None,
              help="for a NEW database: `primary` for the first site (it initialises the witness at epoch 1); "
                   "without it the site becomes a standby of the witness's primary. An existing control row is "
                   "never changed here: roles change through a runbook")
@click.option("--operator", default=_os_user, show_default="your OS user name",
              help="who is acting, for the witness's audit")
@pass_cli
def db_upgrade(cli: CliContext, site_id: str, role: str | None, operator: str) -> None:
    """Migrate SITE's database to the newest schema and create its control row if it has none.

    The role and epoch come from the witness (settings: witness_url), never from the order of sites."""
    cli.check_site(site_id)
    settings = cli.settings
    url = settings.database_url(site_id)
    witness = open_settings_witness(settings, create=True)
    try:
        upgrade_with_witness(witness, url, site_id, SiteRole(role) if role else None, operator)
    except WitnessUnavailable as exc:
        fail(str(exc), 1)
    finally:
        witness.close()


def upgrade_with_witness(witness: Witness, url: str, site_id: str, requested: SiteRole | None,
                         operator: str) -> None:
    """Migrate the site's database and create its control row as the witness's role rule decides (audited); a
    refusal ends the command with exit 2 and the rule's sentence. The demo uses it too."""
    started = time.monotonic()
    audit = _auditor(witness, operator, site_id, requested, started)
    existing = _existing_control(url, site_id)
    decision = _decide(site_id, requested, witness.state(), existing)
    if isinstance(decision, Refusal):
        audit("refused", reason=decision.reason)
        fail(decision.reason, 2)
    _ensure_parent(url)
    try:
        upgrade(url)
    except OperationalError as exc:
        fail(f"cannot migrate site {site_id}'s database ({_safe(url)}): {exc.orig}")
    engine = make_engine(url)
    try:
        if isinstance(decision, KeepExisting):
            control = _keep(witness, engine, site_id, decision, audit)
        else:
            control = _create(witness, engine, site_id, requested, decision, audit)
        click.echo(f"site {site_id}: schema at {current_revision(engine)}; role {control.role.value}, "
                   f"epoch {control.epoch}, intake {control.intake_state.value}")
    finally:
        engine.dispose()
    if decision.note:
        click.secho(f"note: {decision.note}", fg="yellow")


def _decide(site_id: str, requested: SiteRole | None, state: WitnessState, existing: tuple[SiteRole, int] | None):
    return initial_role(site_id, requested, state, existing is not None,
                        existing[0] if existing else None, existing[1] if existing else None)


def _create(witness: Witness, engine, site_id: str, requested: SiteRole | None, decision: InitialRole, audit):
    """Create the control row the rule decided; the witness first, so it is always the authority."""
    changed = "unchanged"
    if decision.initialise_witness:
        state = witness.initialise(site_id)
        if state.primary_site != site_id:  # another site won the race to be first: the rule now refuses
            refusal = _decide(site_id, requested, state, None)
            reason = refusal.reason if isinstance(refusal, Refusal) else f"the witness names {state.primary_site}"
            audit("refused", reason=reason)
            fail(reason, 2)
        changed = "initialised"
    control = init_site(engine, site_id, decision.role, primary_site=decision.primary_site, epoch=decision.epoch)
    audit("ok", witness=changed, role=control.role.value, epoch=control.epoch, primary_site=control.primary_site)
    return control


def _keep(witness: Witness, engine, site_id: str, decision: KeepExisting, audit):
    control = read_control(engine, site_id)
    if decision.adopt:  # a deployment older than the witness: record its primary
        state = witness.initialise(site_id)
        if state.primary_site != site_id:
            reason = (f"the witness names site {state.primary_site} primary at epoch {state.epoch}; site {site_id} "
                      f"was not recorded as primary")
            audit("refused", reason=reason)
            fail(reason, 2)
        audit("ok", witness="adopted", role=control.role.value, epoch=control.epoch)
    return control


def _auditor(witness: Witness, operator: str, site_id: str, requested: SiteRole | None, started: float):
    def audit(outcome: str, **detail) -> None:
        witness.audit(AuditRecord(at=time.time(), operator=operator, action="db.upgrade", target=site_id,
                                  args={"role": requested.value if requested else None}, outcome=outcome,
                                  duration_s=time.monotonic() - started, detail=detail))
    return audit


def _existing_control(url: str, site_id: str) -> tuple[SiteRole, int] | None:
    """The role and epoch of the site's control row if its database has one, read before migrating.

    Only the columns every revision has since the first (site_id, role, epoch), so a database at an older revision
    is read too; a SQLite file that is not there is not created here."""
    if (path := sqlite_file(url)) is not None and not path.exists():
        return None
    engine = make_engine(url, writer=False)
    try:
        if current_revision(engine) is None:
            return None
        with engine.connect() as conn:
            row = conn.execute(text("SELECT role, epoch FROM site_control WHERE site_id = :site_id"),
                               {"site_id": site_id}).first()
        return (SiteRole(row[0]), int(row[1])) if row else None
    except OperationalError as exc:
        fail(f"cannot open site {site_id}'s database ({_safe(url)}): {exc.orig}")
    finally:
        engine.dispose()


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
@click.option("--open-share", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="share of those historical declarations left open (pre-declared, not closed)")
@click.option("--seed", "rng_seed", type=int, default=2025, show_default=True, help="random seed (reproducible)")
@pass_cli
def seed(cli: CliContext, site_id: str, enterprises_count: int, officers_per_section: int, declarations_count: int,
         open_share: float, rng_seed: int) -> None:
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
                      site_digit=settings.site(site_id).site_digit, rng_seed=rng_seed, open_share=open_share,
                      progress=_progress())
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
    if (path := sqlite_file(url)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
