"""standbyctl orgchange …: check an org-structure change set and convert codes through it (issue 10)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import click

from cutover.orgchange import ChangeSetError, Resolver, UnitKind, UnknownCode, load_changeset, summarise, validate
from standbyctl.context import CliContext, fail, pass_cli

SHIPPED = "config/changesets/vn-2025-two-tier/changeset.yaml"


@click.group()
def orgchange() -> None:
    """Org-structure change sets: declarative maps of old administrative units to new ones.

    \b
    A change set is a directory under config/changesets/ with a changeset.yaml manifest (id, effective time, map
    versions) and one CSV per kind of unit (province, ward) giving every old unit's fate: unchanged, renamed,
    merged into one, or split across several with one default successor and a review flag; plus the customs
    branches' coverage. The format is described in config/changesets/README.md.
    \b
    Examples:
      standbyctl orgchange validate config/changesets/vn-2025-two-tier/changeset.yaml
      printf '01\\n02\\n' | standbyctl orgchange resolve config/changesets/vn-2025-two-tier --kind province
    """


def _load(file: Path):
    try:
        return load_changeset(file)
    except ChangeSetError as exc:
        fail(str(exc), 2)


@orgchange.command("validate", short_help="check a change set; list every bad row")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--site", "site_id", default=None, metavar="ID",
              help="also count what the change set would touch on this site (read-only): enterprises, open "
                   "declarations, offices and officers per old province, totals per fate, and site codes it lacks")
@pass_cli
def validate_cmd(cli: CliContext, file: Path, site_id: str | None) -> None:
    """Check the change set FILE (its changeset.yaml, or the directory holding it).

    Exit 0 and print the counts per fate per kind when it is valid. Exit 1 and list EVERY bad row (file, line,
    old code, what is wrong) when it leaves a unit unmapped, names a unit the target map lacks, has a cycle, or
    gives a default successor that is not among its successors (and the other checks in
    cutover/orgchange/validate.py). Exit 2 when the manifest or a file it names cannot be read.
    """
    changeset, problems = _load(file)
    problems += validate(changeset)
    if problems:
        for problem in problems:
            click.echo(f"bad row: {problem}", err=True)
        fail(f"change set {changeset.manifest.id} refused: {len(problems)} bad row(s)", 1)
    m = changeset.manifest
    click.echo(f"change set {m.id} is valid: {m.from_version} -> {m.to_version}, effective {m.effective_at.isoformat()}")
    for kind, counts in summarise(changeset).items():
        click.echo(f"  {kind}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if site_id is not None:
        _report_site(cli, changeset, site_id)


def _report_site(cli: CliContext, changeset, site_id: str) -> None:
    from sqlalchemy.exc import OperationalError

    from cutover.orgchange.touch import read_touch, touch_lines
    from standby.store.engine import make_engine

    cli.check_site(site_id)
    engine = make_engine(cli.settings.database_url(site_id), writer=False)
    try:
        touch = read_touch(engine, changeset.manifest.effective_at.date())
    except OperationalError as exc:
        fail(f"site {site_id}: database unreadable ({exc.orig}); run `standbyctl db upgrade --site {site_id}`", 1)
    finally:
        engine.dispose()
    click.echo(f"on site {site_id} (read-only counts, addresses in the {changeset.manifest.from_version} map):")
    for line in touch_lines(changeset, touch):
        click.echo(line)


@orgchange.command("resolve", short_help="old codes on stdin -> CSV of successors on stdout")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice([k.value for k in UnitKind]), required=True,
              help="which kind of unit the codes on standard input are")
def resolve_cmd(file: Path, kind: str) -> None:
    """Convert old codes (standard input, one per line) through the change set FILE.

    Writes CSV rows `old_code,default_successor,all_successors` on standard output, successors joined by `|`,
    official zero-padded codes, a header first. Codes are read exactly as given (no padding is added: `1` is not
    `01`). An unknown code is reported on standard error and makes the exit status 1; the known codes are still
    written. Blank lines are skipped. The change set is validated first (exit 2 if it is not valid).
    """
    changeset, problems = _load(file)
    if problems or validate(changeset):
        fail(f"{file} is not a valid change set; run `standbyctl orgchange validate {file}`", 2)
    resolver, unit_kind = Resolver(changeset), UnitKind(kind)
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["old_code", "default_successor", "all_successors"])
    unknown = 0
    for raw in sys.stdin:
        code = raw.strip()
        if not code:
            continue
        try:
            r = resolver.resolve(unit_kind, code)
        except UnknownCode as exc:
            unknown += 1
            click.echo(f"error: {exc}", err=True)
            continue
        out.writerow([r.old_code, r.default_successor, "|".join(r.successors)])
    sys.stdout.flush()
    if unknown:
        fail(f"{unknown} unknown {kind} code(s); nothing was guessed for them", 1)


@orgchange.command("unit", short_help="how a unit code resolves on a site: map versions, successors, predecessors")
@click.argument("code")
@click.option("--site", "site_id", required=True, metavar="ID", help="the site whose database is read (read-only)")
@click.option("--kind", type=click.Choice([k.value for k in UnitKind]), required=True, help="the kind of unit")
@click.option("--map", "map_name", default=None, metavar="VERSION",
              help="read CODE in this map version (legacy, 2025 or a date); default: the site's active map, "
                   "else the only version CODE exists in")
@pass_cli
def unit_cmd(cli: CliContext, code: str, site_id: str, kind: str, map_name: str | None) -> None:
    """Print how CODE resolves on the site: the map version it is read in and why, its name, the same code in the
    other map versions (codes are reused with new meanings), and through the site's active change set its
    predecessors (a unit of the active map) or successors (a unit of the previous map), with the codes a search by
    this unit looks for per map version. Exit 1 for an unknown code or map (the message names it)."""
    from sqlalchemy.exc import OperationalError

    from standby.store.engine import make_engine
    from standby.store.orgmap import NoMapState
    from standby.store.units import UnknownMap, UnknownUnit, map_versions, parse_map, resolve_unit, unit_lines

    cli.check_site(site_id)
    engine = make_engine(cli.settings.database_url(site_id), writer=False)
    try:
        with engine.connect() as conn:
            version = parse_map(map_name, map_versions(conn)) if map_name is not None else None
            resolution = resolve_unit(conn, kind, code, version)
    except (UnknownUnit, UnknownMap) as exc:
        fail(f"site {site_id}: {exc}", 1)
    except (OperationalError, NoMapState) as exc:
        fail(f"site {site_id}: database unreadable ({exc}); run `standbyctl db upgrade --site {site_id}`", 1)
    finally:
        engine.dispose()
    for line in unit_lines(resolution):
        click.echo(line)
