"""standbyctl bench …: benchmark commands. Figures go into BENCHMARKS.md; they are never test assertions."""
from __future__ import annotations

import json
import os
import platform
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from standbyctl.context import CliContext, fail, pass_cli
from loadtests.capacity import load_capacity

DEFAULT_MULTIPLIERS = "1,3,10,30,60,100,150,200,300,400,600"


@click.group()
def bench() -> None:
    """Benchmarks (not tests): measured figures for BENCHMARKS.md."""


@bench.command("intake")
@click.option("--multipliers", default=DEFAULT_MULTIPLIERS, show_default=True,
              help="offered load as multiples of the design peak (config/capacity.yaml), in rising order")
@click.option("--step-seconds", type=click.FloatRange(1, 600), default=10, show_default=True)
@click.option("--modes", default="ray,in-process", show_default=True,
              help="'ray' (HTTP → Ray workers) and/or 'in-process' (HTTP → the same pipelines in threads)")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="partitions / workers")
@click.option("--enterprises", "enterprises_count", type=click.IntRange(1000, 10_000_000), default=106_000,
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="write the results as JSON here")
@click.option("--explain-capacity", is_flag=True, help="print how the design rate is derived, then exit")
@pass_cli
def intake(cli: CliContext, multipliers: str, step_seconds: float, modes: str, workers: int, enterprises_count: int,
           out: Path | None, explain_capacity: bool) -> None:
    """Drive one fresh site's HTTP API at rising open-loop rates until it saturates; report sustained throughput
    and decision latency (p50/p95/p99) with Ray workers and with the same pipelines in-process, and the bare
    pipeline's rate, so Ray's overhead is a measured ratio."""
    from standbyctl.bench_intake import main_run

    settings = cli.settings
    capacity = load_capacity(settings.path(settings.reference.capacity))
    click.echo(capacity.explain())
    if explain_capacity:
        return
    try:
        steps = [float(x) for x in multipliers.split(",") if x.strip()]
    except ValueError:
        fail(f"--multipliers must be numbers separated by commas, got {multipliers!r}", 2)
    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    if not steps or any(m not in ("ray", "in-process") for m in chosen):
        fail("--modes takes 'ray' and/or 'in-process'; --multipliers at least one number", 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.time()
    summary = main_run(settings, capacity, workdir=settings.path(settings.data_dir) / "bench" / "intake", port=port,
                       workers=workers, enterprises_count=enterprises_count, multipliers=steps,
                       seconds=step_seconds, modes=chosen, log=click.echo)
    summary["run"] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "machine": f"{platform.node()} {platform.machine()} {_cpus()} cores, Python {platform.python_version()}",
                      "seconds": round(time.time() - started), "step_seconds": step_seconds, "workers": workers}
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "modes"}, indent=2))
    for mode, m in summary["modes"].items():
        click.echo(f"{mode}: sustained {m['sustained_declarations_per_s']}/s "
                   f"({m['sustained_multiple_of_design_peak']}x design peak); p99 decision at 3x: "
                   f"{m['decision_p99_ms_at_3x']} ms (green lane {m['green_decision_p99_ms_at_3x']} ms)")
    if out:
        out.write_text(json.dumps(summary, indent=2))
        click.echo(f"results written to {out}")


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


@bench.command("replication")
@click.option("--declarations", type=click.IntRange(1000, 10_000_000), default=220_000, show_default=True,
              help="historical declarations written as the backlog (each is 1 row + its goods lines)")
@click.option("--partitions", type=click.IntRange(1, 32), default=2, show_default=True)
@click.option("--window", type=click.IntRange(100, 100_000), default=5000, show_default=True)
@click.option("--lag-seconds", type=click.FloatRange(0, 3600), default=30, show_default=True,
              help="how long intake runs at --lag-multiplier x design while lag is measured (0: skip)")
@click.option("--lag-multiplier", type=click.FloatRange(0.1, 1000), default=3, show_default=True)
@click.option("--enterprises", "enterprises_count", type=click.IntRange(1000, 10_000_000), default=106_000,
              show_default=True)
@click.option("--backends", default="sqlite,postgres", show_default=True,
              help="'sqlite' (SQLite → SQLite) and/or 'postgres' (two throwaway clusters; also runs PostgreSQL's "
                   "native logical replication on the same workload)")
@click.option("--read-ahead/--no-read-ahead", default=None,
              help="read the next window while the workers apply the current one (default: as the source prefers, "
                   "on for SQLite, off for PostgreSQL)")
@click.option("--primary-commit", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="PostgreSQL: the primary's synchronous_commit. 'on' as a production primary runs (a commit is "
                   "flushed, hence decodable, when it returns); 'off' as the test clusters run, where a commit "
                   "reaches the decoder only at the WAL writer's next flush (every 200 ms), which then sets most "
                   "of the lag")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="write the results as JSON here")
@pass_cli
def replication(cli: CliContext, declarations: int, partitions: int, window: int, lag_seconds: float,
                lag_multiplier: float, enterprises_count: int, backends: str, read_ahead: bool | None,
                primary_commit: str, out: Path | None) -> None:
    """Catch-up apply rate (row changes/s) from a backlog of over a million row changes, SQLite → SQLite and
    PostgreSQL → PostgreSQL beside PostgreSQL's native logical replication on the same workload, and the replication
    delay p50/p99 while intake runs at 3x design. Uses its own databases under var/bench/replication."""
    from standbyctl.bench_replication import (Pair, catch_up, close, lag_under_intake, make_backlog,
                                           native_catch_up, pg_clusters, set_up, sqlite_pair)
    from loadtests.percentile import percentile_ms
    from standby.domain.risk import load_risk_rules
    from standby.domain.tariff import load_tariff
    from standby.ray_runtime import ensure_ray
    from standby.reference.orgdata import load_org_data

    settings = cli.settings
    capacity = load_capacity(settings.path(settings.reference.capacity))
    org = load_org_data(settings.path(settings.reference.org_dir))
    tariff, rules = (load_tariff(settings.path(settings.reference.tariffs)),
                     load_risk_rules(settings.path(settings.reference.risk_rules)))
    ensure_ray(settings.ray.address, settings.ray.num_cpus)
    results: dict = {"run": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "machine": f"{platform.node()} {platform.machine()} {_cpus()} cores",
                             "declarations": declarations, "partitions": partitions, "window": window,
                             "read_ahead": read_ahead, "primary_synchronous_commit": primary_commit}}
    chosen = [b.strip() for b in backends.split(",") if b.strip()]
    if not chosen or any(b not in ("sqlite", "postgres") for b in chosen):
        fail("--backends takes 'sqlite' and/or 'postgres'", 2)

    def ours(name: str, pair) -> dict:
        try:
            click.echo(f"- {name}: seeding the primary and snapshotting the standby …")
            set_up(pair, enterprises_count, partitions, window, read_ahead)
            out = {}
            if lag_seconds:  # steady state first: intake at the multiplier while the stream keeps up
                click.echo(f"- {name}: lag while intake runs at {lag_multiplier:g}x design for {lag_seconds:g} s …")
                delays = lag_under_intake(pair, capacity, lag_multiplier, lag_seconds)
                lag = {f"p{p}_ms": percentile_ms(delays, p) for p in (50, 95, 99)}
                click.echo(f"  commit-to-apply delay over {len(delays):,} row changes: p50 {lag['p50_ms']} ms, "
                           f"p95 {lag['p95_ms']} ms, p99 {lag['p99_ms']} ms")
                out["lag_at_multiplier"] = {"multiplier": lag_multiplier, "changes": len(delays), **lag}
            changes = make_backlog(pair, declarations, click.echo)
            seconds = catch_up(pair, click.echo)
            click.echo(f"  caught up {changes:,} row changes in {seconds:.1f} s: {changes / seconds:,.0f} row changes/s")
            out.update({"backlog_row_changes": changes, "catch_up_seconds": round(seconds, 2),
                        "row_changes_per_s": round(changes / seconds)})
            return out
        finally:
            close(pair)

    if "sqlite" in chosen:
        results["sqlite"] = ours("SQLite → SQLite", sqlite_pair(
            settings.path(settings.data_dir) / "bench" / "replication", org, tariff, rules))
    if "postgres" in chosen:
        clusters = pg_clusters(click.echo, primary_commit)
        try:
            clusters[0].create_database("ours_a")
            clusters[1].create_database("ours_b")
            results["postgres"] = ours("PostgreSQL → PostgreSQL", Pair(
                clusters[0].url("ours_a"), clusters[1].url("ours_b"), org, tariff, rules))
            click.echo("- PostgreSQL native logical replication, same workload …")
            native = native_catch_up(clusters[0], clusters[1], org, tariff, rules, enterprises_count, declarations,
                                     click.echo)
            changes = results["postgres"]["backlog_row_changes"]
            native["row_changes_per_s"] = round(changes / native["catch_up_seconds"])
            native["ours_to_native"] = round(results["postgres"]["row_changes_per_s"] / native["row_changes_per_s"], 3)
            click.echo(f"  native caught up in {native['catch_up_seconds']} s: {native['row_changes_per_s']:,} "
                       f"row changes/s (same backlog); ours is {native['ours_to_native']:.1%} of native")
            results["postgres_native"] = native
        finally:
            for cluster in clusters:
                cluster.cleanup()
    click.echo(json.dumps(results, indent=2))
    if out:
        out.write_text(json.dumps(results, indent=2))


@bench.command("front")
@click.option("--multiplier", type=click.FloatRange(0.1, 100), default=3, show_default=True,
              help="offered load as a multiple of the design peak (config/capacity.yaml)")
@click.option("--seconds", type=click.FloatRange(5, 600), default=30, show_default=True,
              help="length of each round on each path")
@click.option("--rounds", type=click.IntRange(1, 20), default=2, show_default=True,
              help="rounds; each drives the site directly, then through the front, at the same rate")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="the site's workers")
@click.option("--enterprises", "enterprises_count", type=click.IntRange(1000, 10_000_000), default=20_000,
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="write the results as JSON here")
@pass_cli
def front(cli: CliContext, multiplier: float, seconds: float, rounds: int, workers: int, enterprises_count: int,
          out: Path | None) -> None:
    """The front's extra hop: one fresh site and one front (each its own process, a real SQLite witness), driven
    open-loop at MULTIPLIER x design alternately straight and through the front; prints per path p50/p90/p99 of
    every request, and the extra hop request by request (the client's latency minus the site's round trip the front
    reports in Server-Timing). Uses its own databases under var/bench/front."""
    from standbyctl.bench_front import main_run

    settings = cli.settings
    capacity = load_capacity(settings.path(settings.reference.capacity))
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    started = time.time()
    try:
        summary = main_run(settings, capacity, workdir=settings.path(settings.data_dir) / "bench" / "front",
                           site_port=ports[0], front_port=ports[1], multiplier=multiplier, seconds=seconds,
                           rounds=rounds, workers=workers, enterprises_count=enterprises_count, log=click.echo)
    except RuntimeError as exc:
        fail(str(exc))
    summary["run"] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "machine": f"{platform.node()} {platform.machine()} {_cpus()} cores, Python "
                                 f"{platform.python_version()}", "seconds": round(time.time() - started)}
    click.echo(json.dumps(summary, indent=2))
    d, f, x = summary["paths"]["direct"], summary["paths"]["front"], summary["extra_hop_per_request"]
    click.echo(f"{multiplier:g}x design: direct p50 {d['p50_ms']} ms p99 {d['p99_ms']} ms; through the front p50 "
               f"{f['p50_ms']} ms p99 {f['p99_ms']} ms; extra hop per request p50 {x['p50_ms']} ms, p99 "
               f"{x['p99_ms']} ms ({x['requests']} requests)")
    if out:
        out.write_text(json.dumps(summary, indent=2))
        click.echo(f"results written to {out}")


@bench.command("switchover")
@click.option("--switchovers", type=click.IntRange(1, 100), default=10, show_default=True,
              help="switchovers back and forth: A→B, B→A, … (an even number ends on A)")
@click.option("--multiplier", type=click.FloatRange(0.1, 100), default=3, show_default=True,
              help="Locust load through the front as a multiple of the design peak (config/capacity.yaml)")
@click.option("--backend", type=click.Choice(["sqlite", "postgresql"]), default="sqlite", show_default=True,
              help="sqlite: files under var/bench/switchover; postgresql: throwaway clusters for A, B and the witness")
@click.option("--gap-s", type=click.FloatRange(0, 3600), default=10, show_default=True,
              help="seconds between the end of one switchover and the next: the reverse stream runs and catches up")
@click.option("--warmup-s", type=click.FloatRange(0, 3600), default=40, show_default=True,
              help="seconds of load before the first switchover (Locust ramps its users over 30 s)")
@click.option("--enterprises", "enterprises_count", type=click.IntRange(1000, 10_000_000), default=20_000,
              show_default=True)
@click.option("--retries", type=click.IntRange(0, 20), default=3, show_default=True,
              help="a switchover refused before freezing (e.g. the freeze estimate over budget) is run again after "
                   "GAP-S, this many times at most; refusals are shown in the table")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="write the results as JSON here")
@pass_cli
def switchover(cli: CliContext, switchovers: int, multiplier: float, backend: str, gap_s: float, warmup_s: float,
               enterprises_count: int, retries: int, out: Path | None) -> None:
    """Planned switchovers back and forth under Locust through the front, with a client-side ledger.

    \b
    Deploys on this machine, each in its own process: sites A and B (`serve`), the front, the replicator A → B
    (the runbook starts each reverse one), with the databases set up through the witness (`db upgrade`, `seed`).
    Locust drives the front at MULTIPLIER x design and records every number acknowledged to a client (--ledger-dir).
    Then SWITCHOVERS times `standbyctl runbook run switchover` (A→B, B→A, …), GAP-S seconds apart.

    \b
    Per switchover, from the runbook journal in the witness and the /metrics of the front and the sites:
      freeze             the freeze step's frozen_at to intake open on the new primary (the resume step's freeze_s)
      command→resume     from starting the command to that moment (preflight and verify included)
      drain, catch-up, bump+promote, reverse    each step's duration (where the freeze goes)
      held front/site    writes the front and the sites held; added latency: their mean hold (front_hold_seconds,
                         clearance_intake_hold_seconds)
      client errors      Locust failures from this switchover's start to the next one's (503s retried in brackets)
      ledger             every acknowledgement so far found on the new primary, with what the client sent
    At the end (load stopped, standby settled): the ledger on the final primary, and verify between the sites.

    \b
    Targets (DESIGN §4): freeze ≤ 1 s max over the switchovers, 0 client errors, 0 lost or doubled. Exits 1 when
    one is missed, with the reason on the last line. Logs of every process: var/bench/switchover/*.log."""
    from standbyctl.bench_switchover import main_run, table

    settings = cli.settings
    started = time.time()
    click.echo(f"switchover bench: {switchovers} switchovers on {backend} at {multiplier:g}x design, "
               f"{gap_s:g} s apart")
    try:
        result = main_run(settings, workdir=settings.path(settings.data_dir) / "bench" / "switchover",
                          backend=backend, switchovers=switchovers, multiplier=multiplier, gap_s=gap_s,
                          warmup_s=warmup_s, enterprises_count=enterprises_count, retries=retries,
                          log=click.echo)
    except RuntimeError as exc:
        fail(str(exc))
    click.echo(table(result["rows"]))
    for e in [e for e in result["events"] if e["kind"] == "failure" and e["at"] < result["stop_at"]][:10]:
        click.echo(f"  client error at {datetime.fromtimestamp(e['at'], timezone.utc):%H:%M:%S.%f}: {e['name']} "
                   f"after {e['ms']:.0f} ms: {e['error']}")
    click.echo(f"final primary {result['final_primary']}; 503s retried by clients {result['retried']}; requests cut "
               f"off by stopping the load {result['cut_off']}; run took {time.time() - started:.0f} s on "
               f"{platform.node()} ({_cpus()} cores, load average {os.getloadavg()[0]:.1f} at the end)")
    if out:
        out.write_text(json.dumps({"run": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                           "backend": backend, "multiplier": multiplier, "gap_s": gap_s},
                                   "summary": result["summary"], "failed": result["failed"],
                                   "rows": [_row_json(r) for r in result["rows"]]}, indent=2, default=str))
        click.echo(f"results written to {out}")
    click.echo(result["summary"])
    if result["failed"]:
        fail(result["failed"])


def _row_json(row: dict) -> dict:
    import dataclasses

    return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in row.items()}


@bench.command("restructure")
@click.option("--declarations", "sizes", default="250000,1000000", show_default=True,
              help="store sizes to run, comma-separated: historical declarations seeded on A (a fresh rig each)")
@click.option("--enterprises", "enterprises_count", type=click.IntRange(1000, 10_000_000), default=106_000,
              show_default=True, help="enterprises on the legacy map")
@click.option("--open-share", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="share of the seeded declarations left open (the live records the switch moves)")
@click.option("--multiplier", type=click.FloatRange(0.1, 100), default=3, show_default=True,
              help="Locust load through the front as a multiple of the design peak (config/capacity.yaml)")
@click.option("--backend", type=click.Choice(["sqlite", "postgresql"]), default="sqlite", show_default=True,
              help="sqlite: files under var/bench/restructure; postgresql: throwaway clusters for A, B and the witness")
@click.option("--warmup-s", type=click.FloatRange(0, 3600), default=40, show_default=True,
              help="seconds of load before the first runbook (Locust ramps its users over 30 s)")
@click.option("--gap-s", type=click.FloatRange(0, 3600), default=5, show_default=True,
              help="seconds between one runbook's end and the next one's start")
@click.option("--changeset", default="config/changesets/vn-2025-two-tier/changeset.yaml", show_default=True)
@click.option("--quick", is_flag=True, help="a small run for the test suite: 5,000 declarations, 1,000 "
              "enterprises, 3 s warm-up, no gap (overrides those options)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="write the results as JSON here")
@pass_cli
def restructure(cli: CliContext, sizes: str, enterprises_count: int, open_share: float, multiplier: float,
                backend: str, warmup_s: float, gap_s: float, changeset: str, quick: bool, out: Path | None) -> None:
    """The org change set applied to a loaded primary under Locust through the front, at each store size.

    \b
    Per size, a fresh deployment as bench switchover's (sites A and B, the front, the replicator A → B, each its
    own process), A seeded with ENTERPRISES enterprises on the legacy map and the declarations (OPEN-SHARE of them
    open) before the replicator snapshots B; the seeding time and rate are reported. Then, as `standbyctl runbook
    run`: org-restructure in place on A, org-rollback, and org-restructure-via-switchover when runbooks/ has it.

    \b
    Per run, from its journal: prepare s (online, intake open), freeze s (the resume step's freeze_s: frozen_at to
    intake open again), drain s (the freeze step's), the switch/rollback step's own seconds and what it moved;
    per size: client errors (Locust failures while the load ran), the ledger (every acknowledgement on the final
    primary: lost, doubled, mismatched) and verify between the sites.

    \b
    Targets (issue 10): freeze ≤ 10 s in place, ≤ 2 s via switchover, 0 client errors, 0 lost, a freeze that does
    not grow with the store. Exits 1 when anything was lost or doubled, a runbook failed or verify was not clean;
    missed timing targets are printed on the last line. Logs of every process: var/bench/restructure/SIZE/*.log."""
    from standbyctl.bench_restructure import lost_anything, main_run, table

    try:
        chosen = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        fail(f"--declarations takes whole numbers separated by commas, got {sizes!r}", 2)
    if quick:
        chosen, enterprises_count, warmup_s, gap_s = [5_000], 1_000, 3.0, 0.0
    if not chosen or any(n < 1000 for n in chosen):
        fail("--declarations needs at least one size, each at least 1000", 2)
    settings = cli.settings
    started = time.time()
    click.echo(f"restructure bench on {backend} at {multiplier:g}x design: sizes {', '.join(f'{n:,}' for n in chosen)}"
               f", {enterprises_count:,} enterprises, {open_share:.0%} of declarations open")
    try:
        result = main_run(settings, workdir=settings.path(settings.data_dir) / "bench" / "restructure",
                          backend=backend, sizes=chosen, enterprises_count=enterprises_count, open_share=open_share,
                          multiplier=multiplier, warmup_s=warmup_s, gap_s=gap_s, changeset=changeset, log=click.echo)
    except RuntimeError as exc:
        fail(str(exc))
    click.echo(table(result))
    click.echo(f"run took {time.time() - started:.0f} s on {platform.node()} ({_cpus()} cores, load average "
               f"{os.getloadavg()[0]:.1f} at the end), {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    if out:
        out.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **result},
                                  indent=2, default=str))
        click.echo(f"results written to {out}")
    if lost_anything(result) or not all(s["verify_ok"] for s in result["sizes"]):
        fail(result["failed"] or "verify found differences")
    click.echo(result["failed"] or "every target met")


@bench.command("failover")
@click.option("--backend", type=click.Choice(["sqlite", "postgresql", "both"]), default="sqlite", show_default=True,
              help="sqlite: files in the work folder; postgresql: throwaway clusters for A, B and the witness")
@click.option("--kills", type=click.IntRange(1, 100), default=10, show_default=True,
              help="kills of the primary per backend (A, then B, …: each failback makes the dead site the standby)")
@click.option("--multiplier", type=click.FloatRange(0.1, 100), default=3, show_default=True,
              help="Locust load through the front as a multiple of the design peak (config/capacity.yaml)")
@click.option("--warmup-s", type=click.FloatRange(0, 3600), default=40, show_default=True,
              help="seconds of load before each measured window (Locust ramps its users over 30 s)")
@click.option("--window-s", type=click.FloatRange(5, 3600), default=60, show_default=True,
              help="seconds of decision latency measured in each mode (sync, async)")
@click.option("--gap-s", type=click.FloatRange(0, 3600), default=10, show_default=True,
              help="seconds between a failback and the next kill")
@click.option("--sync/--no-sync", "sync_window", default=True, show_default=True,
              help="measure decision latency with settings.sync pairing A and B before the kills")
@click.option("--trigger", type=click.Choice(["watch", "runbook"]), default="watch", show_default=True,
              help="watch: `standbyctl watch --site S --auto` per site fails over by itself; runbook: the bench runs "
                   "`standbyctl runbook run failover` once the lease expired, as an operator would")
@click.option("--flap-guard-s", type=click.FloatRange(0, 3600), default=10, show_default=True,
              help="with --trigger watch: settings watch.flap_guard_s for the run (shorter than a round)")
@click.option("--enterprises", "enterprises_count", type=click.IntRange(1000, 10_000_000), default=20_000,
              show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="work folder (logs, ledger, databases); default var/bench/failover; one subfolder per backend")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON at the end (always written to "
                                                      "WORKDIR/BACKEND/results.json)")
@pass_cli
def failover(cli: CliContext, backend: str, kills: int, multiplier: float, warmup_s: float, window_s: float,
             gap_s: float, sync_window: bool, trigger: str, flap_guard_s: float, enterprises_count: int,
             workdir: Path | None, as_json: bool) -> None:
    """Kill -9 of every process of the primary site under Locust through the front, KILLS times per backend.

    \b
    Deploys as `bench switchover` does (sites A and B with their lease keepers, the front, the replicator A → B,
    one witness, one Ray). With --sync, both sites first run with settings.sync pairing A and B for a warm-up and a
    measured window; then without it, and the window before the first kill is the asynchronous one.
    Each round: SIGKILL to the primary's serve (process group), its Ray workers, the replicator out of it and its
    watch; the failover by the standby's `standbyctl watch --auto` (--trigger watch) or by `standbyctl runbook run
    failover` started once the witness's lease expired (--trigger runbook, as an operator would); the dead site's
    serve started again; `standbyctl runbook run failback` (rebuild as standby, reconcile). The next round kills the
    new primary.

    \b
    Per kill: RTO (kill to the first 201 under a number of the new primary's site digit, in the client ledger),
    client errors in the gap (kill → that write + 2 s) and after it, RPO (the failover report's lost count beside
    the ledger's), what the failback quarantined and reconciled, acknowledged numbers still missing after it.
    Decision latency p50/p99 (green lane) sync beside async. Targets: RTO ≤ 5 s; nothing acknowledged missing after
    reconcile beyond listed conflicts. Exits 1 when one is missed, with the reason on the last line."""
    from standbyctl.bench_failover import main_run
    from standbyctl.bench_failover_figures import latency_table, round_table, verdict

    settings = cli.settings
    root = workdir or settings.path(settings.data_dir) / "bench" / "failover"
    missed = []
    for each in (["sqlite", "postgresql"] if backend == "both" else [backend]):
        started = time.time()
        click.echo(f"failover bench on {each}: {kills} kills at {multiplier:g}x design, failover by {trigger}")
        try:
            result = main_run(settings, workdir=root / each, backend=each, kills=kills, multiplier=multiplier,
                              warmup_s=warmup_s, window_s=window_s, gap_s=gap_s, sync_window=sync_window,
                              enterprises_count=enterprises_count, trigger=trigger, flap_guard_s=flap_guard_s,
                              log=click.echo)
        except RuntimeError as exc:
            fail(f"{each}: {exc}")
        summary, failed = verdict(result["rows"], result["final"], result["verify_ok"], result["phases"])
        click.echo(round_table(result["rows"]))
        click.echo(latency_table(result["phases"]))
        for row in result["rows"]:
            for error, count in row["events"]["gap_errors"].items():
                click.echo(f"  kill {row['n']}: {count} x {error}")
        run = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "backend": each, "kills": kills,
               "multiplier": multiplier, "trigger": trigger, "seconds": round(time.time() - started),
               "machine": f"{platform.node()} {platform.machine()} {_cpus()} cores, Python "
                          f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end"}
        click.echo(f"{each}: final primary {result['final_primary']}; run took {run['seconds']} s on {run['machine']}")
        document = {"run": run, "summary": summary, "failed": failed, "phases": result["phases"],
                    "rows": [_row_json(r) for r in result["rows"]]}
        (root / each / "results.json").write_text(json.dumps(document, indent=2, default=str))
        if as_json:
            click.echo(json.dumps(document, indent=2, default=str))
        click.echo(f"{each}: {summary}")
        if failed:
            missed.append(f"{each}: {failed}")
    if missed:
        fail("; ".join(missed))


@bench.command("sync")
@click.option("--multiplier", type=click.FloatRange(0.1, 100), default=3, show_default=True,
              help="Locust load through the front as a multiple of the design peak (config/capacity.yaml)")
@click.option("--backend", type=click.Choice(["sqlite", "postgresql"]), default="sqlite", show_default=True,
              help="sqlite: files under var/bench/sync; postgresql: throwaway clusters for A, B and the witness")
@click.option("--rounds", type=click.IntRange(1, 20), default=1, show_default=True,
              help="rounds; each measures one window asynchronous and one synchronous (order alternating)")
@click.option("--warmup-s", type=click.FloatRange(0, 3600), default=35, show_default=True,
              help="seconds of load before each window (Locust ramps its users over 30 s)")
@click.option("--window-s", type=click.FloatRange(5, 3600), default=30, show_default=True,
              help="seconds measured per window")
@click.option("--replicator-idle-ms", type=click.FloatRange(0, 10_000), default=None,
              help="the replicator's wait between reads once caught up (settings.replication.idle_sleep_ms; default: "
                   "as the settings say)")
@click.option("--enterprises", "enterprises_count", type=click.IntRange(1000, 10_000_000), default=20_000,
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="write the results as JSON here")
@pass_cli
def sync(cli: CliContext, multiplier: float, backend: str, rounds: int, warmup_s: float, window_s: float,
         replicator_idle_ms: float | None, enterprises_count: int, out: Path | None) -> None:
    """Synchronous mode's cost in decision latency: the same Locust load through the front at MULTIPLIER x design
    against primary A with its standby B applied asynchronously, and with settings.sync pairing A and B (each write
    answered once B has applied it), in one deployment (sites, replicator A → B, front: each its own process).
    Prints the green-lane decision's p50/p99 side by side; logs of every process in var/bench/sync/*.log."""
    from standbyctl.bench_sync import main_run, table

    settings = cli.settings
    started = time.time()
    click.echo(f"sync bench on {backend} at {multiplier:g}x design: {rounds} round(s) of async and sync windows of "
               f"{window_s:g} s")
    try:
        result = main_run(settings, workdir=settings.path(settings.data_dir) / "bench" / "sync", backend=backend,
                          multiplier=multiplier, warmup_s=warmup_s, window_s=window_s, rounds=rounds,
                          enterprises_count=enterprises_count, log=click.echo, replicator_idle_ms=replicator_idle_ms)
    except RuntimeError as exc:
        fail(str(exc))
    click.echo(table(result))
    click.echo(f"run took {time.time() - started:.0f} s on {platform.node()} ({_cpus()} cores, load average "
               f"{os.getloadavg()[0]:.1f} at the end), {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    if out:
        out.write_text(json.dumps(result, indent=2, default=str))
        click.echo(f"results written to {out}")
