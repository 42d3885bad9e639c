"""standbyctl loadtest: Locust against a running site, then SLO verdicts and a report a planner reads at a glance."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click
import httpx

from cutover.context import CliContext, fail, pass_cli

DURATION = re.compile(r"^(\d+)(s|m|h)$")


def _seconds(text: str) -> int:
    match = DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r}: use a number with s, m or h, e.g. 90s, 10m, 1h")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


@click.command()
@click.option("--site", "site_id", default="A", show_default=True, help="the running primary site to load")
@click.option("--multiplier", type=click.FloatRange(0.1, 1000), default=3, show_default=True,
              help="offered load as a multiple of the design peak (config/capacity.yaml)")
@click.option("--duration", default="10m", show_default=True, help="how long, e.g. 90s, 10m, 1h")
@click.option("--shape", type=click.Choice(["steady", "step", "spike"]), default="steady", show_default=True,
              help="steady at --multiplier; step ramp to find the knee; the first-day-after-cutover spike")
@click.option("--workers", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Locust worker processes (0: one process)")
@click.option("--standby-site", default=None, metavar="ID", help="also send read-only queries to this standby")
@click.option("--replication-metrics-url", default=None, metavar="URL",
              help="the replicator's /metrics (e.g. http://127.0.0.1:9464/metrics): lag becomes part of the run")
@click.option("--loadtest-config", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="the user mix, think times and shapes (default: config/loadtest.yaml); e.g. a coarser step ramp")
@click.option("--declarants", type=click.IntRange(1, 100_000), default=300, show_default=True,
              help="enterprises the simulated declarants act for")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="report folder (default: reports/loadtest-<shape>-<multiplier>x-<time>)")
@pass_cli
def loadtest(cli: CliContext, site_id: str, multiplier: float, duration: str, shape: str, workers: int,
             standby_site: str | None, replication_metrics_url: str | None, loadtest_config: Path | None,
             declarants: int, out: Path | None) -> None:
    """Run Locust headless against a running SITE, then judge the run against config/slo.yaml and write
    report.html (plots, SLO table, knee, parameters) with PNGs beside it. Exits 1 if an SLO fails.

    \b
    The site must be serving (standbyctl serve --site A). Tokens for the simulated declarants and officers are
    issued for the run; the running site accepts them within a second."""
    from loadtests.capacity import load_capacity
    from loadtests.report import write_report
    from loadtests.slo import find_knee, load_slos, overall_exit_code, read_locust_csv, verdicts

    settings = cli.settings
    cli.check_site(site_id)
    seconds = _seconds(duration)
    http = settings.site(site_id).http
    host = f"http://{http.host}:{http.port}"
    try:
        ready = httpx.get(f"{host}/readyz", timeout=3)
    except httpx.HTTPError:
        fail(f"site {site_id} is not answering at {host}; start it with `standbyctl serve --site {site_id}`")
    if ready.status_code != 200:
        fail(f"site {site_id} at {host} is not an open primary: {ready.text}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = out or settings.path(Path("reports") / f"loadtest-{shape}-{multiplier:g}x-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    tokens_file = out / "tokens.json"
    _issue_tokens(cli, site_id, declarants, tokens_file)
    time.sleep(1.2)  # the site re-reads its tokens file at most once a second
    cmd = [sys.executable, "-m", "locust", "-f", str(settings.path(Path("loadtests/locustfile.py"))), "--headless",
           "--host", host, "--tokens-file", str(tokens_file), "--shape", shape, "--multiplier", str(multiplier),
           "--loadtest-config", str(loadtest_config.resolve() if loadtest_config
                                    else settings.path(Path("config/loadtest.yaml"))),
           "--capacity-config", str(settings.path(settings.reference.capacity)),
           "-t", f"{seconds}s", "--csv", str(out / "run"), "--csv-full-history", "--only-summary"]
    if workers:
        cmd += ["--processes", str(workers)]
    if standby_site:
        s = settings.site(standby_site).http
        cmd += ["--standby-host", f"http://{s.host}:{s.port}"]
    if replication_metrics_url:
        cmd += ["--replication-metrics-url", replication_metrics_url]
    load = f"at {multiplier:g}x design" if shape == "steady" else "(rates from the shape in the load-test config)"
    click.echo(f"Locust: {shape} {load} for {duration} against {host} …")
    started = time.time()
    run = subprocess.run(cmd, cwd=settings.root, capture_output=True, text=True, timeout=seconds + 600)
    (out / "locust.log").write_text(run.stdout + run.stderr)
    if run.returncode not in (0, 1):  # 1: Locust saw failed requests, which the verdicts judge
        fail(f"Locust exited with {run.returncode}; see {out / 'locust.log'}")
    stats = read_locust_csv(out / "run")
    slos = load_slos(settings.path(Path("config/slo.yaml")))
    judged = verdicts(stats, slos)
    capacity = load_capacity(settings.path(settings.reference.capacity))
    knee = find_knee(stats, slos, design=capacity) if shape == "step" else None
    params = {"site": site_id, "host": host, "shape": shape, "multiplier": multiplier, "duration": duration,
              "workers": workers, "declarants": declarants,
              "loadtest_config": str(loadtest_config or "config/loadtest.yaml"), "started": datetime.fromtimestamp(
                  started, timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv)}
    report = write_report(stats, judged, knee, params, out)
    for v in judged:
        mark = {True: "PASS", False: "FAIL", None: "not measured"}[v.passed]
        click.echo(f"  {mark:<12} {v.name}: {v.measured} (target {v.target})" + (f" — {v.note}" if v.note else ""))
    if knee:
        click.echo(f"  knee: {knee.sentence()}")
    click.echo(f"report: {report}")
    raise SystemExit(overall_exit_code(judged))


def _issue_tokens(cli: CliContext, site_id: str, declarants: int, path: Path) -> None:
    from cutover.commands.tokens import issue_many

    ctx = click.get_current_context()
    ctx.invoke(issue_many, site_id=site_id, declarants=declarants, officers_per_section=2, out=path)
