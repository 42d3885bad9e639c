"""standbyctl demo: the main job on the embedded default, end to end through the HTTP API."""
from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid

import click
from sqlalchemy import select

from standbyctl.commands.db import upgrade_with_witness
from standbyctl.commands.witness import open_settings_witness
from standbyctl.context import CliContext, fail, pass_cli
from standbyctl.demo import Cast, DemoStats, run_traffic
from loadtests.client import SiteClient
from standby.api.auth import TokenEntry, TokenRegistry, token_digest
from standby.clearance.commands import Role
from standby.domain.states import Kind, SiteRole
from standby.domain.tariff import load_tariff
from standby.ray_runtime import ensure_ray, shutdown_ray
from standby.reference.orgdata import load_org_data
from standby.site_process import BackgroundServer, build_site
from standby.store.engine import make_engine
from standby.store.schema import enterprises, officers
from standby.store.seed import seed
from standby.store.site import read_control
from standby.synthetic import make_declaration_payload


@click.command()
@click.option("--site", "site_id", default="A", show_default=True, help="the site to run (it is made primary if new)")
@click.option("--declarations", type=click.IntRange(1, 100_000), default=300, show_default=True,
              help="declarations to work through their whole life")
@click.option("--concurrency", type=click.IntRange(1, 1000), default=32, show_default=True,
              help="declarations in flight at once")
@click.option("--serve/--no-serve", default=False, help="keep serving after the run (Ctrl-C to stop)")
@click.option("--seed", "rng_seed", type=int, default=7, show_default=True)
@pass_cli
def demo(cli: CliContext, site_id: str, declarations: int, concurrency: int, serve: bool, rng_seed: int) -> None:
    """Set up SITE (schema, reference data, 106,000 enterprises), start it with its Ray workers, work DECLARATIONS
    through pre-declare, registration, officer checks and payment over HTTP, and print what happened."""
    cli.check_site(site_id)
    settings = cli.settings
    url = settings.database_url(site_id)
    step = _Steps()
    with step("schema, and the site's role from the witness"):
        settings.path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        witness = open_settings_witness(settings, create=True)
        try:
            upgrade_with_witness(witness, url, site_id, SiteRole.PRIMARY, operator="demo")
            state = witness.state()
        finally:
            witness.close()
        engine = make_engine(url)
        control = read_control(engine, site_id)
        if control.role is not SiteRole.PRIMARY:
            fail(f"site {site_id} is a standby now (the witness names site {state.primary_site} primary at epoch "
                 f"{state.epoch}); run the demo on the primary: ./run demo --site {state.primary_site}", 2)
    with step("reference data and synthetic population (first run only)"):
        org = load_org_data(settings.path(settings.reference.org_dir))
        report = seed(engine, org, progress=lambda stage, done, total: None)
        if report.enterprises:
            click.echo(f"      {report.enterprises:,} enterprises, {report.officers:,} officers seeded")
    rng = random.Random(rng_seed)
    cast, tokens = _cast(engine, rng)
    with step("local Ray and the clearance workers"):
        started_ray = ensure_ray(settings.ray.address, settings.ray.num_cpus)
        site = build_site(settings, site_id)
        site.services.tokens = tokens
    http = settings.site(site_id).http
    port = http.port if _port_free(http.host, http.port) else _free_port(http.host)
    server = BackgroundServer(site.app, http.host, port).start()
    click.echo(f"  site {site_id} serving {server.url} (primary, {settings.clearance_workers(site_id)} workers)")
    try:
        tariff = load_tariff(settings.path(settings.reference.tariffs))
        started = time.perf_counter()
        stats, checks = asyncio.run(_drive(server.url, cast, tariff, declarations, concurrency, rng, engine))
        _report(stats, checks, time.perf_counter() - started, declarations, server.url)
        if serve:
            click.echo("serving until Ctrl-C …")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        site.close()
        if started_ray:
            shutdown_ray()


class _Steps:
    def __call__(self, what: str):
        click.echo(f"- {what} …")
        return _Timed()


class _Timed:
    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        if exc[0] is None:
            click.echo(f"  done in {time.perf_counter() - self.t:.1f}s")


def _cast(engine, rng: random.Random) -> tuple[Cast, TokenRegistry]:
    """Tokens for 60 active enterprises and every officer, made in memory for this run only."""
    with engine.connect() as conn:
        active = list(conn.execute(select(enterprises.c.tax_code).where(
            enterprises.c.status == "active", enterprises.c.tax_debt_days <= 90).limit(5000)).scalars())
        blocked = conn.execute(select(enterprises.c.tax_code).where(enterprises.c.status == "suspended")).scalar()
        officer_ids = list(conn.execute(select(officers.c.officer_id)).scalars())
        offices = sorted({o.split("-")[0] for o in officer_ids})
    chosen = rng.sample(active, 60) + ([blocked] if blocked else [])
    made: dict[tuple[Role, str], str] = {}
    for role, subject in [(Role.DECLARANT, t) for t in chosen] + [(Role.OFFICER, o) for o in officer_ids]:
        made[(role, subject)] = f"demo-{role.value}-{subject}-{rng.getrandbits(64):x}"
    registry = TokenRegistry([TokenEntry(token_digest(tok), role, subj) for (role, subj), tok in made.items()])
    declarants = {s: t for (r, s), t in made.items() if r is Role.DECLARANT and s != blocked}
    cast = Cast(declarants, {s: t for (r, s), t in made.items() if r is Role.OFFICER}, offices,
                (blocked, made[(Role.DECLARANT, blocked)]) if blocked else None)
    return cast, registry


async def _drive(url: str, cast: Cast, tariff, count: int, concurrency: int, rng: random.Random, engine):
    client = SiteClient(url, max_connections=concurrency)
    try:
        stats = await run_traffic(client, cast, tariff, count, concurrency, rng)
        checks = await _robustness_checks(client, cast, tariff, rng)
    finally:
        await client.close()
    return stats, checks


async def _robustness_checks(client: SiteClient, cast: Cast, tariff, rng: random.Random) -> list[tuple[str, str]]:
    """A few things a real client will do wrong, and what the site answers."""
    tax_code, token = next(iter(cast.declarants.items()))
    payload = make_declaration_payload(rng, Kind.IMPORT, tax_code, cast.offices[0], tariff)
    key = f"demo-retry-{uuid.uuid4().hex}"
    first = await client.pre_declare(token, payload, key=key)
    again = await client.pre_declare(token, payload, key=key)
    replayed = (again.headers or {}).get("Idempotent-Replayed") == "true"
    out = [("a retry with the same Idempotency-Key",
            f"{again.status}, the same number {again.body.get('number')} (first answer {first.body.get('number')}), "
            f"replayed={replayed}, no second declaration")]
    too_many = dict(payload, goods=payload["goods"][:1] * 51)
    bad = await client.pre_declare(token, too_many)
    out.append(("51 goods lines", f"{bad.status} {bad.error_code}: {bad.body['error']['message']}"))
    bad_hs = dict(payload, goods=[dict(payload["goods"][0], hs_code="1234")])
    bad = await client.pre_declare(token, bad_hs)
    out.append(("HS code 1234", f"{bad.status} {bad.error_code}: {bad.body['error']['message']}"))
    if cast.blocked:
        blocked, blocked_token = cast.blocked
        made = await client.pre_declare(blocked_token, make_declaration_payload(rng, Kind.EXPORT, blocked,
                                                                                 cast.offices[0], tariff))
        refused = await client.register(blocked_token, made.body["number"])
        out.append(("registration by a suspended enterprise",
                    f"{refused.status} {refused.error_code}: {refused.body['error']['message']}"))
    return out


def _report(stats: DemoStats, checks, seconds: float, count: int, url: str) -> None:
    decided = sum(stats.lanes.values())
    click.echo(f"\n{count} declarations in {seconds:.1f}s over HTTP ({count / seconds:.0f}/s incl. all their steps)")
    click.echo("lane mix (design reference 53% green / 40% yellow / 7% red):")
    for lane in ("green", "yellow", "red"):
        n = stats.lanes[lane]
        click.echo(f"  {lane:<7}{n:>6}  {100 * n / max(decided, 1):5.1f}%")
    click.echo("deciding rules: " + ", ".join(f"{r} {n}" for r, n in stats.rules.most_common(6)))
    click.echo(f"decision latency (registration → lane, client-side): p50 {stats.percentile_ms(50)} ms, "
               f"p95 {stats.percentile_ms(95)} ms, p99 {stats.percentile_ms(99)} ms")
    click.echo("final states: " + ", ".join(f"{s} {n}" for s, n in sorted(stats.final_states.items())) +
               f"; amended {stats.amended}")
    if stats.refusals:
        click.echo("refusals: " + ", ".join(f"{c} {n}" for c, n in stats.refusals.most_common()))
    click.echo("what the site answers to mistakes:")
    for what, answer in checks:
        click.echo(f"  {what}: {answer}")
    click.echo(f"metrics: {url}/metrics   API docs: {url}/docs   (rerun with --serve to keep them up)")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
