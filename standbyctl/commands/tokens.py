"""standbyctl tokens: bearer tokens for declarants, officers and operators."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click
from sqlalchemy import select

from standbyctl.context import CliContext, fail, open_site_database, pass_cli
from standby.api.auth import issue_token, issue_tokens, read_tokens_file, revoke_tokens
from standby.clearance.commands import Role
from standby.store.schema import enterprises, officers


@click.group()
def tokens() -> None:
    """Issue, list and revoke API tokens. The tokens file keeps only SHA-256 hashes."""


def _label(_ctx, _param, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("a label needs at least one visible character")
    return value


@tokens.command("issue")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--subject", required=True,
              help="declarant: the enterprise's tax code; officer: the officer id (e.g. 01CA-01-01); operator: a name")
@pass_cli
def issue(cli: CliContext, role: str, subject: str) -> None:
    """Create a token and print it once. A running site accepts it within a second."""
    if role == Role.DECLARANT.value and not (subject.isdigit() and len(subject) in (10, 13)):
        fail(f"a declarant's subject is the enterprise's 10- or 13-digit tax code, not {subject!r}", 2)
    path = cli.settings.path(cli.settings.auth.tokens_file)
    token = issue_token(path, Role(role), subject)
    click.echo(token)
    click.echo(f"(role {role}, subject {subject}; hash stored in {path}; this token is not shown again)", err=True)


@tokens.command("issue-many")
@click.option("--site", "site_id", required=True, metavar="ID", help="the site whose enterprises and officers to use")
@click.option("--declarants", type=click.IntRange(0, 100_000), default=200, show_default=True,
              help="tokens for this many active enterprises (not blocked)")
@click.option("--officers-per-section", type=click.IntRange(0, 100), default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="JSON file (mode 0600) with the tokens' texts, for a load generator")
@click.option("--label", default=None, metavar="TEXT", callback=_label,
              help="mark this batch, so `standbyctl tokens revoke --label TEXT` removes it when the run is over")
@pass_cli
def issue_many(cli: CliContext, site_id: str, declarants: int, officers_per_section: int, out: Path,
               label: str | None) -> None:
    """Issue tokens in bulk for a load test: declarants of active enterprises and officers of every office. The
    hashes go to the tokens file (a running site accepts them within a second); the texts go to OUT only."""
    engine = open_site_database(cli, site_id, writer=False)
    with engine.connect() as conn:
        tax_codes = list(conn.execute(select(enterprises.c.tax_code).where(
            enterprises.c.status == "active", enterprises.c.tax_debt_days <= 90)
            .order_by(enterprises.c.tax_code).limit(declarants)).scalars())
        staff = conn.execute(select(officers.c.officer_id, officers.c.office_code).where(
            officers.c.active.is_(True), officers.c.position < officers_per_section)
            .order_by(officers.c.officer_id)).all()
    wanted = [(Role.DECLARANT, t) for t in tax_codes] + [(Role.OFFICER, o) for o, _ in staff]
    texts = issue_tokens(cli.settings.path(cli.settings.auth.tokens_file), wanted, label=label)
    body = {"declarants": [{"tax_code": t, "token": x} for t, x in zip(tax_codes, texts)],
            "officers": [{"officer_id": o, "office": office, "token": x}
                         for (o, office), x in zip(staff, texts[len(tax_codes):])],
            "offices": sorted({office for _, office in staff})}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(body))
    os.chmod(out, 0o600)
    click.echo(f"{len(tax_codes)} declarant and {len(staff)} officer tokens; texts in {out} (keep it private)")


@tokens.command("list")
@pass_cli
def list_tokens(cli: CliContext) -> None:
    """List the roles and subjects that hold tokens (never the tokens)."""
    path = cli.settings.path(cli.settings.auth.tokens_file)
    entries = read_tokens_file(path).get("tokens", [])
    for e in entries:
        label = f"  [{e['label']}]" if e.get("label") else ""
        click.echo(f"{e['role']:<10} {e['subject']:<16} sha256:{e['sha256'][:12]}…{label}")
    click.echo(f"{len(entries)} token(s) in {path}", err=True)


@tokens.command("revoke")
@click.option("--label", required=True, metavar="TEXT", callback=_label, help="the label the batch was issued with")
@pass_cli
def revoke(cli: CliContext, label: str) -> None:
    """Revoke every token issued with --label (e.g. one load-test run's). A running site refuses them within a
    second. Exits 1 when no token carries the label, so a typo is not taken for success."""
    path = cli.settings.path(cli.settings.auth.tokens_file)
    removed = revoke_tokens(path, label)
    if not removed:
        fail(f"no token in {path} carries the label {label!r}; `standbyctl tokens list` shows the labels")
    click.echo(f"revoked {removed} token(s) labelled {label!r} in {path}")
