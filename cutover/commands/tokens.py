"""standbyctl tokens: bearer tokens for declarants, officers and operators."""
from __future__ import annotations

import click
import yaml

from cutover.context import CliContext, fail, pass_cli
from standby.api.auth import issue_token
from standby.clearance.commands import Role


@click.group()
def tokens() -> None:
    """Issue and list API tokens. The tokens file keeps only SHA-256 hashes."""


@tokens.command("issue")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--subject", required=True,
              help="declarant: the enterprise's tax code; officer: the officer id (e.g. 01CA-01-01); operator: a name")
@pass_cli
def issue(cli: CliContext, role: str, subject: str) -> None:
    """Create a token and print it once. Running servers load tokens at start: restart them to pick it up."""
    if role == Role.DECLARANT.value and not (subject.isdigit() and len(subject) in (10, 13)):
        fail(f"a declarant's subject is the enterprise's 10- or 13-digit tax code, not {subject!r}", 2)
    path = cli.settings.path(cli.settings.auth.tokens_file)
    token = issue_token(path, Role(role), subject)
    click.echo(token)
    click.echo(f"(role {role}, subject {subject}; hash stored in {path}; this token is not shown again)", err=True)


@tokens.command("list")
@pass_cli
def list_tokens(cli: CliContext) -> None:
    """List the roles and subjects that hold tokens (never the tokens)."""
    path = cli.settings.path(cli.settings.auth.tokens_file)
    raw = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.exists() else {}
    entries = raw.get("tokens", [])
    for e in entries:
        click.echo(f"{e['role']:<10} {e['subject']:<16} sha256:{e['sha256'][:12]}…")
    click.echo(f"{len(entries)} token(s) in {path}", err=True)
