"""standbyctl bench intake: saturation throughput and decision latency of one site, over HTTP, with Ray workers and
with the same pipelines in-process, plus the bare pipeline with neither HTTP nor Ray."""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from sqlalchemy import select

from loadtests.capacity import DesignCapacity
from loadtests.client import SiteClient
from loadtests.open_loop import StepResult, run_step
from standby.api.auth import issue_token
from standby.clearance.commands import Command, Op, Principal, Role
from standby.clearance.pipeline import ClearancePipeline
from standby.domain.risk import load_risk_rules
from standby.domain.states import Kind, SiteRole
from standby.domain.tariff import load_tariff
from standby.reference.orgdata import load_org_data
from standby.settings import Settings, load_settings
from standby.store.engine import make_engine
from standby.store.migrate import upgrade
from standby.store.schema import enterprises
from standby.store.seed import seed
from standby.store.site import init_site
from standby.synthetic import make_declaration_payload


@dataclass(frozen=True)
class BenchSite:
    config: Path
    settings: Settings
    load: list[tuple[str, dict]]  # (declarant token, pre-declaration payload)


def prepare(base: Settings, workdir: Path, port: int, workers: int, enterprises_count: int, log) -> BenchSite:
    """A fresh site A in `workdir`: schema, reference data, population, declarant tokens and ready payloads."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    config = workdir / "bench.yaml"
    config.write_text(yaml.safe_dump({
        "root": str(base.root), "data_dir": str(workdir),
        "sites": {"A": {"site_digit": 1, "database_url": f"sqlite:///{workdir / 'site-a.db'}",
                        "http": {"host": "127.0.0.1", "port": port}}},
        "ray": {"workers": workers}, "auth": {"tokens_file": str(workdir / "tokens.yaml")},
        "intake": base.intake.model_dump(), "reference": {k: str(base.path(v)) for k, v in
                                                           base.reference.model_dump().items()},
    }))
    settings = load_settings(config)
    url = settings.database_url("A")
    upgrade(url)
    engine = make_engine(url)
    init_site(engine, "A", SiteRole.PRIMARY)
    seed(engine, load_org_data(settings.path(settings.reference.org_dir)), enterprises_count=enterprises_count)
    log(f"  site seeded with {enterprises_count:,} enterprises in {workdir}")
    rng = random.Random(11)
    tariff = load_tariff(settings.path(settings.reference.tariffs))
    with engine.connect() as conn:
        active = list(conn.execute(select(enterprises.c.tax_code).where(
            enterprises.c.status == "active", enterprises.c.tax_debt_days <= 90).limit(20_000)).scalars())
    offices = [o.code for o in load_org_data(settings.path(settings.reference.org_dir)).offices]
    tokens_file = settings.path(settings.auth.tokens_file)
    declarants = rng.sample(active, 300)
    token_of = {tc: issue_token(tokens_file, Role.DECLARANT, tc) for tc in declarants}
    load = []
    for i in range(3000):
        tc = declarants[i % len(declarants)]
        kind = Kind.IMPORT if rng.random() < 0.55 else Kind.EXPORT
        load.append((token_of[tc], make_declaration_payload(rng, kind, tc, rng.choice(offices), tariff)))
    engine.dispose()
    return BenchSite(config, settings, load)


def start_server(site: BenchSite, in_process: bool, logfile: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "standbyctl.cli", "--config", str(site.config), "serve", "--site", "A"]
    if in_process:
        cmd.append("--in-process")
    out = logfile.open("w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    http = site.settings.site("A").http
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the site server exited with {proc.returncode}; see {logfile}")
        try:
            if httpx.get(f"http://{http.host}:{http.port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError(f"the site server was not ready within 180 s; see {logfile}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def saturated(step: StepResult, p99_bound_s: float = 1.0) -> bool:
    """A step is past saturation when it sheds load, errs, falls 10% behind the offered rate or its p99 passes 1 s."""
    return (step.shed > 0 or step.error_rate > 0.01 or step.achieved_per_s < 0.9 * step.offered_per_s
            or step.pct(99) > p99_bound_s)


async def ramp(url: str, site: BenchSite, capacity: DesignCapacity, multipliers: list[float], seconds: float,
               log) -> list[tuple[float, StepResult]]:
    client = SiteClient(url, max_connections=500)
    steps: list[tuple[float, StepResult]] = []
    try:
        await run_step(client, site.load, 20, 2)  # warm-up: connections, caches, the first number blocks
        for m in multipliers:
            step = await run_step(client, site.load, capacity.declarations_per_s(m), seconds)
            steps.append((m, step))
            log(f"  {m:>6g}x  offered {step.offered_per_s:8.1f}/s  achieved {step.achieved_per_s:8.1f}/s  "
                f"decision p50 {step.pct(50) * 1000:7.1f} ms  p95 {step.pct(95) * 1000:7.1f}  "
                f"p99 {step.pct(99) * 1000:7.1f} (green p99 {step.pct(99, 'green') * 1000:7.1f})  "
                f"errors {sum(step.errors.values())}  shed {step.shed}")
            if saturated(step):
                break
    finally:
        await client.close()
    return steps


def bare_pipeline_rate(site: BenchSite, declarations: int) -> float:
    """Declarations/s (pre-declare + register) through ClearancePipeline in this process: no HTTP, no Ray."""
    s = site.settings
    engine = make_engine(s.database_url("A"))
    pipeline = ClearancePipeline(engine, "A", 1, load_tariff(s.path(s.reference.tariffs)),
                                 load_risk_rules(s.path(s.reference.risk_rules)), block_size=1000)
    operator = Principal(Role.OPERATOR, "bench")
    started, done, batch = time.perf_counter(), 0, 500
    while done < declarations:
        chunk = [site.load[(done + i) % len(site.load)][1] for i in range(batch)]
        made = pipeline.process([Command(Op.PRE_DECLARE, operator, f"bare-p-{done + i}", p, p["office_code"])
                                 for i, p in enumerate(chunk)])
        pipeline.process([Command(Op.REGISTER, operator, f"bare-r-{done + i}", {"number": m.body["number"]}, "")
                          for i, m in enumerate(made) if m.ok])
        done += batch
    engine.dispose()
    return done / (time.perf_counter() - started)


def best_sustained(steps: list[tuple[float, StepResult]]) -> tuple[float, StepResult] | None:
    ok = [(m, s) for m, s in steps if not saturated(s)]
    return max(ok, key=lambda ms: ms[1].achieved_per_s) if ok else None


def run_modes(site: BenchSite, capacity: DesignCapacity, multipliers, seconds, modes, log) -> dict:
    http = site.settings.site("A").http
    url = f"http://{http.host}:{http.port}"
    results = {}
    for mode in modes:
        log(f"- {mode}: HTTP → {'pipelines in threads of the server' if mode == 'in-process' else 'Ray ClearanceWorkers'}")
        proc = start_server(site, mode == "in-process", site.config.parent / f"server-{mode}.log")
        try:
            results[mode] = asyncio.run(ramp(url, site, capacity, multipliers, seconds, log))
        finally:
            stop_server(proc)
    return results


def main_run(settings: Settings, capacity: DesignCapacity, *, workdir: Path, port: int, workers: int,
             enterprises_count: int, multipliers: list[float], seconds: float, modes: list[str], log) -> dict:
    site = prepare(settings, workdir, port, workers, enterprises_count, log)
    results = run_modes(site, capacity, multipliers, seconds, modes, log)
    log("- bare pipeline (no HTTP, no Ray), batches of 500 …")
    bare = bare_pipeline_rate(site, 20_000)
    log(f"  {bare:,.0f} declarations/s (pre-declare + register)")
    return summarise(results, bare, capacity)


def summarise(results: dict, bare: float, capacity: DesignCapacity) -> dict:
    summary = {"design_peak_declarations_per_s": round(capacity.peak_declarations_per_s, 3),
               "bare_pipeline_declarations_per_s": round(bare, 1), "modes": {}}
    for mode, steps in results.items():
        best = best_sustained(steps)
        at3 = next((s for m, s in steps if m == 3), None)
        summary["modes"][mode] = {
            "steps": [{"multiplier": m, **s.as_dict()} for m, s in steps],
            "sustained_declarations_per_s": round(best[1].achieved_per_s, 1) if best else 0.0,
            "sustained_multiple_of_design_peak": round(best[0], 1) if best else 0.0,
            "decision_p99_ms_at_3x": round(at3.pct(99) * 1000, 2) if at3 else None,
            "green_decision_p99_ms_at_3x": round(at3.pct(99, "green") * 1000, 2) if at3 else None,
        }
    modes = summary["modes"]
    if "ray" in modes and "in-process" in modes and modes["ray"]["sustained_declarations_per_s"]:
        summary["in_process_over_ray"] = round(
            modes["in-process"]["sustained_declarations_per_s"] / modes["ray"]["sustained_declarations_per_s"], 2)
    return summary
