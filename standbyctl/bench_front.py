"""standbyctl bench front: what the front's extra hop costs a client, at 3x design peak.

One fresh site (its own process, Ray workers) and one front (its own process, a real SQLite witness naming the site)
are driven open-loop at the same rate, alternately straight at the site and through the front, in rounds, so drift
in the machine's load hits both paths alike. Every request's latency is kept (pre-declare and registration).

The extra hop is measured request by request: the client's latency through the front minus the site's round trip
the front reports in `Server-Timing: front-upstream;dur=<ms>` (so a slow database write, which both paths pay, does
not hide in it). The difference of the two paths' percentiles is printed beside it; on a shared machine it is
noisier. The front's own handling (`front_forward_latency_seconds`) is read from its /metrics at the end."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cutover.witness import open_witness
from loadtests.capacity import DesignCapacity
from loadtests.client import SiteClient
from loadtests.percentile import percentile_ms
from standby.settings import Settings, load_settings
from standbyctl.bench_intake import BenchSite, prepare, start_server, stop_server


def add_front(site: BenchSite, front_port: int) -> BenchSite:
    """The bench's settings with a witness naming site A and a front section on `front_port`."""
    raw = yaml.safe_load(site.config.read_text())
    raw["witness_url"] = f"sqlite:///{site.config.parent / 'witness.db'}"
    raw["front"] = {"host": "127.0.0.1", "port": front_port}
    site.config.write_text(yaml.safe_dump(raw))
    settings = load_settings(site.config)
    witness = open_witness(settings.witness_url)
    try:
        witness.initialise("A")
    finally:
        witness.close()
    return BenchSite(site.config, settings, site.load)


def start_front(site: BenchSite, logfile: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "standbyctl.cli", "--config", str(site.config), "front"]
    proc = subprocess.Popen(cmd, stdout=logfile.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = front_url(site.settings)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the front exited with {proc.returncode}; see {logfile}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"the front was not ready within 60 s; see {logfile}")


def front_url(settings: Settings) -> str:
    return f"http://{settings.front.host}:{settings.front.port}"


def site_url(settings: Settings) -> str:
    http = settings.site("A").http
    return f"http://{http.host}:{http.port}"


def upstream_s(headers) -> float | None:
    """The site's round trip the front reports in `Server-Timing: front-upstream;dur=<ms>`, in seconds."""
    for part in (headers or {}).get("Server-Timing", "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name == "front-upstream" and dur:
            return float(dur) / 1000
    return None


async def one_declaration(client: SiteClient, token: str, body: dict, out: dict) -> None:
    """Pre-declare and register one declaration; keep each request's latency and, through the front, its extra
    hop (the client's latency minus the site's round trip the front reports)."""
    try:
        made = await client.pre_declare(token, body)
        replies = [made]
        if made.ok:
            replies.append(await client.register(token, made.body["number"]))
    except Exception as exc:  # a transport failure is an error of the run, not a crash of the bench
        out["errors"][type(exc).__name__] = out["errors"].get(type(exc).__name__, 0) + 1
        return
    for reply in replies:
        if not reply.ok and reply.error_code != "enterprise_blocked":  # a blocked enterprise's refusal is correct
            code = reply.error_code or str(reply.status)
            out["errors"][code] = out["errors"].get(code, 0) + 1
            return
        out["latencies"].append(reply.seconds)
        upstream = upstream_s(reply.headers)
        if upstream is not None:
            out["extra"].append(reply.seconds - upstream)
    out["completed"] += 1


async def open_loop(client: SiteClient, load: list[tuple[str, dict]], rate: float, seconds: float,
                    out: dict) -> None:
    """Declarations arrive at `rate` per second for `seconds` whatever the answers (open loop, as loadtests'
    run_step); waits for every one started."""
    started, tasks = time.perf_counter(), set()
    for i in range(int(rate * seconds)):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        token, body = load[i % len(load)]
        task = asyncio.create_task(one_declaration(client, token, body, out))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


async def drive(site: BenchSite, rate: float, seconds: float, rounds: int, log) -> dict[str, dict]:
    """Alternate the two paths for `rounds` rounds; per path, every request's latency (and extra hop) and errors."""
    paths = {"direct": site_url(site.settings), "front": front_url(site.settings)}
    clients = {name: SiteClient(url, max_connections=200) for name, url in paths.items()}
    seen = {name: {"latencies": [], "extra": [], "errors": {}, "completed": 0} for name in paths}
    try:
        for client in clients.values():  # warm-up: connections, caches, number blocks
            await open_loop(client, site.load, 10, 2, {"latencies": [], "extra": [], "errors": {}, "completed": 0})
        for r in range(rounds):
            for name, client in clients.items():
                out = {"latencies": [], "extra": [], "errors": {}, "completed": 0}
                await open_loop(client, site.load, rate, seconds, out)
                for k in ("latencies", "extra"):
                    seen[name][k] += out[k]
                seen[name]["completed"] += out["completed"]
                for code, n in out["errors"].items():
                    seen[name]["errors"][code] = seen[name]["errors"].get(code, 0) + n
                hop = (f", extra hop p50 {percentile_ms(out['extra'], 50, 2)} ms p99 "
                       f"{percentile_ms(out['extra'], 99, 2)} ms") if out["extra"] else ""
                log(f"  round {r + 1}/{rounds} {name:>6}: {out['completed']} declarations, {len(out['latencies'])} "
                    f"requests p50 {percentile_ms(out['latencies'], 50, 2)} ms p99 "
                    f"{percentile_ms(out['latencies'], 99, 2)} ms{hop}, errors {sum(out['errors'].values())}")
    finally:
        for client in clients.values():
            await client.close()
    return seen


def front_own_view(settings: Settings) -> dict:
    """The front's count, mean and bucket-bounded p50/p99 of front_forward_latency_seconds (its own handling)."""
    text = httpx.get(f"{front_url(settings)}/metrics", timeout=10).text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples
               if s.name.startswith("front_forward_latency_seconds")]
    count = next((s.value for s in samples if s.name.endswith("_count")), 0)
    total = next((s.value for s in samples if s.name.endswith("_sum")), 0)
    buckets = sorted((float(s.labels["le"]), s.value) for s in samples if s.name.endswith("_bucket"))

    def bound(p: float) -> float:
        return next((le for le, n in buckets if n >= p / 100 * count), float("inf"))

    return {"requests": int(count), "mean_ms": round(total / count * 1000, 3) if count else None,
            "p50_at_most_ms": bound(50) * 1000, "p99_at_most_ms": bound(99) * 1000}


def main_run(settings: Settings, capacity: DesignCapacity, *, workdir: Path, site_port: int, front_port: int,
             multiplier: float, seconds: float, rounds: int, workers: int, enterprises_count: int, log) -> dict:
    site = add_front(prepare(settings, workdir, site_port, workers, enterprises_count, log), front_port)
    rate = capacity.declarations_per_s(multiplier)
    log(f"- {multiplier:g}x design = {rate:.2f} declarations/s ({2 * rate:.1f} requests/s), {rounds} rounds of "
        f"{seconds:g} s per path")
    site_proc = start_server(site, False, workdir / "site.log")
    try:
        front_proc = start_front(site, workdir / "front.log")
        try:
            seen = asyncio.run(drive(site, rate, seconds, rounds, log))
            own = front_own_view(site.settings)
        finally:
            stop_server(front_proc)
    finally:
        stop_server(site_proc)
    return summarise(seen, own, rate, multiplier)


def summarise(seen: dict[str, dict], own: dict, rate: float, multiplier: float) -> dict:
    paths = {name: {"requests": len(s["latencies"]), "declarations": s["completed"], "errors": s["errors"],
                    **{f"p{p}_ms": percentile_ms(s["latencies"], p, 3) for p in (50, 90, 99)}}
             for name, s in seen.items()}
    difference = {f"p{p}_ms": None if None in (paths["front"][f"p{p}_ms"], paths["direct"][f"p{p}_ms"]) else
                  round(paths["front"][f"p{p}_ms"] - paths["direct"][f"p{p}_ms"], 3) for p in (50, 90, 99)}
    extra = seen["front"]["extra"]
    per_request = {"requests": len(extra), **{f"p{p}_ms": percentile_ms(extra, p, 3) for p in (50, 90, 99)}}
    return {"multiplier": multiplier, "declarations_per_s": round(rate, 2), "paths": paths,
            "extra_hop_per_request": per_request, "difference_of_percentiles": difference,
            "front_own_handling": own}
