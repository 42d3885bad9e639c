"""standbyctl orgchange …: check an org-structure change set and convert codes through it (issue 10)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import click

from cutover.orgchange import ChangeSetError, Resolver, UnitKind, UnknownCode, load_changeset, summarise, validate
from standbyctl.context import fail

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
def validate_cmd(file: Path) -> None:
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
