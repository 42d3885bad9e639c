"""standbyctl loadtest: Locust against a running site, then SLO verdicts and a report a planner reads at a glance."""
from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click
import httpx

from standbyctl.context import CliContext, fail, pass_cli
from standbyctl.token_reload import wait_until_accepted
from standby.api.auth import revoke_tokens

DURATION = re.compile(r"^(\d+)(s|m|h)$")
PROGRESS_EVERY_S = 30


def _seconds(text: str) -> int:
    match = DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r}: use a number with s, m or h, e.g. 90s, 10m, 1h")
    seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]
    if seconds < 5:  # Locust reads -t 0s as "no limit"; a shorter run measures nothing
        raise click.BadParameter(f"{text!r}: a run lasts at least 5s")
    return seconds


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
@click.option("--keep-tokens", is_flag=True,
              help="keep the run's tokens afterwards (default: revoked when the run ends)")
@pass_cli
def loadtest(cli: CliContext, site_id: str, multiplier: float, duration: str, shape: str, workers: int,
             standby_site: str | None, replication_metrics_url: str | None, loadtest_config: Path | None,
             declarants: int, out: Path | None, keep_tokens: bool) -> None:
    """Run Locust headless against a running SITE, then judge the run against config/slo.yaml and write
    report.html (plots, SLO table, knee, parameters) with PNGs beside it. Exits 1 if an SLO fails; a step ramp,
    which goes past the knee on purpose, exits 1 only when even its first step broke an SLO.

    \b
    The site must be serving (standbyctl serve --site A). Tokens for the simulated declarants and officers are
    issued for the run, labelled loadtest-<time>, and revoked when it ends (unless --keep-tokens).
    Progress (users, requests/s, p99, failures) is printed every 30 s; Locust's own output goes to locust.log."""
    settings = cli.settings
    seconds = _seconds(duration)
    slos, capacity = _check_config(cli, loadtest_config)
    host = _primary_url(cli, site_id)
    standby_host = _site_url(cli, standby_site) if standby_site else None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = out or settings.path(Path("reports") / f"loadtest-{shape}-{multiplier:g}x-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    tokens_file, label = out / "tokens.json", f"loadtest-{stamp}"
    _issue_tokens(cli, site_id, declarants, tokens_file, label)
    click.echo(f"tokens labelled {label}; if this run is killed, `standbyctl tokens revoke --label {label}`")
    signal.signal(signal.SIGTERM, _interrupt)  # a polite stop revokes the tokens and stops Locust, as Ctrl-C does
    try:
        for url in filter(None, (host, standby_host)):
            _wait_until_accepted(url, tokens_file)
        cmd = _locust_command(cli, host, tokens_file, out, shape, multiplier, seconds, workers, standby_host,
                              replication_metrics_url, loadtest_config)
        load = f"at {multiplier:g}x design" if shape == "steady" else "(rates from the shape in the load-test config)"
        click.echo(f"Locust: {shape} {load} for {duration} against {host} …")
        started = time.time()
        _run_locust(cmd, settings.root, out, seconds)
    finally:
        if not keep_tokens:
            revoked = revoke_tokens(settings.path(settings.auth.tokens_file), label)
            click.echo(f"revoked the run's {revoked} tokens ({label})")
    config_name = str(loadtest_config or "config/loadtest.yaml")
    params = {"site": site_id, "host": host, "shape": shape, "duration": duration,
              "multiplier": multiplier if shape == "steady" else None,
              "load": None if shape == "steady" else f"the {shape} shape of {config_name}",
              "workers": workers, "declarants": declarants, "loadtest_config": config_name,
              "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}
    raise SystemExit(_judge_and_report(out, shape, params, slos, capacity))


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def _check_config(cli: CliContext, loadtest_config: Path | None):
    """The SLOs and the design capacity, after refusing a broken load profile, SLO file or capacity model (exit 2)
    before any token is issued or Locust started."""
    from loadtests.capacity import load_capacity
    from loadtests.profile import check_against_capacity, load_profile
    from loadtests.slo import load_slos

    settings = cli.settings
    try:
        profile = load_profile(loadtest_config or settings.path(Path("config/loadtest.yaml")))
        capacity = load_capacity(settings.path(settings.reference.capacity))
        check_against_capacity(profile, capacity)
        return load_slos(settings.path(Path("config/slo.yaml"))), capacity
    except ValueError as exc:
        fail(str(exc), 2)


def _site_url(cli: CliContext, site_id: str) -> str:
    cli.check_site(site_id)
    http = cli.settings.site(site_id).http
    return f"http://{http.host}:{http.port}"


def _primary_url(cli: CliContext, site_id: str) -> str:
    host = _site_url(cli, site_id)
    try:
        ready = httpx.get(f"{host}/readyz", timeout=3)
    except httpx.HTTPError:
        fail(f"site {site_id} is not answering at {host}; start it with `standbyctl serve --site {site_id}`")
    if ready.status_code != 200:
        fail(f"site {site_id} at {host} is not an open primary: {ready.text}")
    return host


def _issue_tokens(cli: CliContext, site_id: str, declarants: int, path: Path, label: str) -> None:
    from standbyctl.commands.tokens import issue_many

    ctx = click.get_current_context()
    ctx.invoke(issue_many, site_id=site_id, declarants=declarants, officers_per_section=2, out=path, label=label)


def _wait_until_accepted(host: str, tokens_file: Path, timeout_s: float = 30.0) -> None:
    """Wait until the site (a standby too: its read-only clients use the same tokens) accepts this run's last token
    in every HTTP process (standbyctl.token_reload)."""
    issued = json.loads(tokens_file.read_text())
    token = (issued["officers"] or issued["declarants"])[-1]["token"]
    if not wait_until_accepted(host, token, timeout_s):
        fail(f"the site at {host} did not accept the run's tokens within {timeout_s:.0f} s; "
             "is it serving with the same tokens file (config auth.tokens_file)?")


def _locust_command(cli: CliContext, host: str, tokens_file: Path, out: Path, shape: str, multiplier: float,
                    seconds: int, workers: int, standby_host: str | None, replication_metrics_url: str | None,
                    loadtest_config: Path | None) -> list[str]:
    settings = cli.settings
    cmd = [sys.executable, "-m", "locust", "-f", str(settings.path(Path("loadtests/locustfile.py"))), "--headless",
           "--host", host, "--tokens-file", str(tokens_file), "--shape", shape, "--multiplier", str(multiplier),
           "--loadtest-config", str(loadtest_config.resolve() if loadtest_config
                                    else settings.path(Path("config/loadtest.yaml"))),
           "--capacity-config", str(settings.path(settings.reference.capacity)),
           "-t", f"{seconds}s", "--csv", str(out / "run"), "--csv-full-history", "--only-summary",
           "--latency-log", str(out / "run")]
    if workers:
        cmd += ["--processes", str(workers)]
    if standby_host:
        cmd += ["--standby-host", standby_host]
    if replication_metrics_url:
        cmd += ["--replication-metrics-url", replication_metrics_url]
    return cmd


def _run_locust(cmd: list[str], cwd: Path, out: Path, seconds: int) -> None:
    """Run Locust with its output in locust.log, printing a progress line every PROGRESS_EVERY_S seconds."""
    log_path = out / "locust.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + seconds + 600
        try:
            while proc.poll() is None:
                try:
                    proc.wait(timeout=PROGRESS_EVERY_S)
                except subprocess.TimeoutExpired:
                    line = progress_line(out / "run_stats_history.csv")
                    if line:
                        click.echo(f"  {line}")
                if time.monotonic() > deadline:
                    proc.kill()
                    fail(f"Locust ran 10 minutes past its duration and was stopped; see {log_path}")
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait(timeout=30)
            raise
    if proc.returncode not in (0, 1):  # 1: Locust saw failed requests, which the verdicts judge
        fail(f"Locust exited with {proc.returncode}; see {log_path}")


def progress_line(history_csv: Path) -> str | None:
    """One line from the newest Aggregated row of Locust's stats history, or None before there is one."""
    try:
        with open(history_csv, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("Name") == "Aggregated"]
    except OSError:
        return None
    if not rows:
        return None
    r = rows[-1]
    elapsed = int(r["Timestamp"]) - int(rows[0]["Timestamp"])
    return (f"t={elapsed}s users={r['User Count']} requests/s={float(r['Requests/s']):.1f} "
            f"p99={r['99%']} ms failures={r['Total Failure Count']} of {r['Total Request Count']}")


def _judge_and_report(out: Path, shape: str, params: dict, slos, capacity) -> int:
    """Verdicts, the report, and the exit code: a failed SLO for steady and spike runs; for a step ramp (which goes
    past the knee on purpose) only a knee below the first step."""
    from loadtests.report import knee_exit_code, knee_sentence, write_report
    from loadtests.slo import describe_step, knee_of, overall_exit_code, read_locust_csv, steps_from_history, \
        verdicts

    try:
        stats = read_locust_csv(out / "run")
    except ValueError as exc:
        fail(f"Locust left no usable statistics ({exc}); see {out / 'locust.log'}")
    judged = verdicts(stats, slos)
    steps = steps_from_history(stats.history, slos, design=capacity, latency=stats.latency) if shape == "step" else []
    knee = knee_of(steps) if shape == "step" else None
    report = write_report(stats, judged, knee, params, out, steps)
    if steps:
        click.echo("  whole run (past the knee on purpose):")
    for v in judged:
        mark = {True: "PASS", False: "FAIL", None: "not measured"}[v.passed]
        click.echo(f"  {mark:<12} {v.name}: {v.note}")
    for st in steps:
        held = "broke " + ", ".join(b[0] for b in st.broken) if st.broken else "held"
        click.echo(f"  step {describe_step(st)}: green p99 {st.green_p99_ms} ms — {held}")
    if shape == "step":
        click.echo(f"  {knee_sentence(knee, stats)}")
    click.echo(f"report: {report}")
    return knee_exit_code(knee) if shape == "step" else overall_exit_code(judged)
