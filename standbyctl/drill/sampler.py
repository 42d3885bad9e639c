"""The drill's sampler: once a second, what the report's timeline needs and Locust does not see (the primary the
witness names, the standby's replication lag, the writes held now at the front and at the sites), one JSON line a
sample in DIR/samples.jsonl; and the live progress line (current step, its elapsed time, the load through the front,
the lag, the writes held) every few seconds.

It runs in a thread of the drill's process with its own witness handle and site engines (the run's are not shared
across threads). A sample that cannot be taken (a site killed, a database locked) records what it could: the drill
never stops for its sampler."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from standbyctl.bench_switchover import metric_totals
from standbyctl.bench_switchover_deploy import front_url, site_url

OTHER = {"A": "B", "B": "A"}
BEAT_SLACK_S = 1.0  # the sampler sees a new primary up to one sample late


def progress_line(step_title: str | None, step_elapsed_s: float | None, load_rps: float | None,
                  lag_s: float | None, held: int, idle: str = "between steps") -> str:
    """The live line, e.g. `  … step 2 org restructure: 12 s; 31 req/s through the front, lag 0.21 s, 0 held`;
    `idle` names the time outside a step (warm-up, between steps, final checks)."""
    where = f"{step_title}: {step_elapsed_s:.0f} s" if step_title else idle
    load = "load —" if load_rps is None else f"{load_rps:,.0f} req/s through the front"
    lag = "lag —" if lag_s is None else f"lag {lag_s:.2f} s"
    return f"  … {where}; {load}, {lag}, {held} held"


def credible_lag(lag_s: float | None, at: float, primary_since: float) -> float | None:
    """The standby's lag at `at`, or None while it has applied no beat of the primary's current term (since
    `primary_since`): until the new stream applies the new primary's first beat, the standby's newest beat of that
    site is from its last term as primary, minutes ago, and would read as minutes of lag."""
    if lag_s is None or at - lag_s < primary_since - BEAT_SLACK_S:
        return None
    return lag_s


class Sampler:
    """Start with `start()`, mark steps with `step(id, title)` / `step(None)`, stop with `stop()` (joins)."""

    def __init__(self, settings, config_path: Path, out: Path, log: Callable[[str], None], *,
                 every_s: float = 0.25, scrape_every: int = 4, progress_every_s: float = 5.0,
                 clock: Callable[[], float] = time.time):
        self.settings, self.config_path, self.out, self.log = settings, config_path, out, log
        self.every_s, self.progress_every_s, self.clock = every_s, progress_every_s, clock
        # The lag (a witness read and one query) every sample, four a second, so the drill's steady seconds give a
        # p99 over enough values; the sites' and the front's /metrics every `scrape_every`-th sample (once a second).
        self.scrape_every, self._n = scrape_every, 0
        self._held: tuple = (0, 0, None)  # the last scrape's, carried by the samples between scrapes
        self._step: tuple[str, str, float] | None = None
        self._idle = "warm-up"  # what the progress line calls the time outside a step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="drill-sampler", daemon=True)
        self._last_forwarded: tuple[float, float] | None = None
        self._primary: tuple[str | None, float] = (None, 0.0)  # the primary seen last, since when

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def step(self, step_id: str | None, title: str | None = None) -> None:
        self._step = (step_id, title or step_id, self.clock()) if step_id else None
        self._idle = "between steps"

    def finishing(self) -> None:
        """The steps are over: the progress line says final checks."""
        self._step, self._idle = None, "final checks"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        from cutover.actions.sites import Sites
        from cutover.witness import open_witness

        witness = open_witness(self.settings.witness_url, root=self.settings.root)
        sites = Sites(self.settings, witness, config_path=self.config_path)
        http = httpx.Client(timeout=2.0)
        last_progress = self.clock()
        try:
            with self.out.open("a", encoding="utf-8") as fh:
                while not self._stop.wait(self.every_s):
                    sample = self._sample(witness, sites, http)
                    fh.write(json.dumps(sample) + "\n")
                    fh.flush()
                    if sample["at"] - last_progress >= self.progress_every_s:
                        last_progress = sample["at"]
                        self._progress(sample)
        finally:
            http.close()
            sites.close()
            witness.close()

    def _sample(self, witness, sites, http: httpx.Client) -> dict:
        at = self.clock()
        step = self._step
        sample = {"at": at, "step": step[0] if step else None, "primary": None, "lag_s": None,
                  "front_held": 0, "site_held": 0, "load_rps": None}
        try:
            primary = witness.state().primary_site
            sample["primary"] = primary
            if primary != self._primary[0]:
                self._primary = (primary, at)
            sample["lag_s"] = credible_lag(sites.replication_lag_s(primary, OTHER[primary]), at, self._primary[1])
        except Exception:  # noqa: BLE001 - a site being killed or rebuilt: the sample records what it has
            pass
        self._n += 1
        if self._n % self.scrape_every:
            sample["front_held"], sample["site_held"], sample["load_rps"] = self._held
            return sample
        front = _totals(http, front_url(self.settings))
        sample["front_held"] = int(front.get("front_held_requests", 0))
        sample["site_held"] = int(sum(_totals(http, site_url(self.settings, s)).get("clearance_intake_held", 0)
                                      for s in self.settings.sites))
        forwarded = front.get("front_forwarded_total")
        if forwarded is not None:
            if self._last_forwarded is not None and at > self._last_forwarded[0]:
                sample["load_rps"] = max(0.0, (forwarded - self._last_forwarded[1]) / (at - self._last_forwarded[0]))
            self._last_forwarded = (at, forwarded)
        self._held = (sample["front_held"], sample["site_held"], sample["load_rps"])
        return sample

    def _progress(self, sample: dict) -> None:
        step = self._step
        self.log(progress_line(step[1] if step else None, (sample["at"] - step[2]) if step else None,
                               sample["load_rps"], sample["lag_s"], sample["front_held"] + sample["site_held"], self._idle))


def _totals(http: httpx.Client, url: str) -> dict[str, float]:
    try:
        return metric_totals(http.get(f"{url}/metrics").text)
    except (httpx.HTTPError, ValueError):
        return {}
