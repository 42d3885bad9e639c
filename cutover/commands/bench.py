"""standbyctl bench …: benchmark commands. Figures go into BENCHMARKS.md; they are never test assertions."""
from __future__ import annotations

import json
import platform
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from cutover.context import CliContext, fail, pass_cli
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
    from cutover.bench_intake import main_run

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
