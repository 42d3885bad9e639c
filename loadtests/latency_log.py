"""Per-second latency histograms of the SLO measurements, so a plateau's p99 is exact.

Locust's stats history gives, each second, percentiles over a rolling 10 s window only; a plateau's p99 cannot be
rebuilt from those (the worst window's p99 overstates it, the mean of windows' p99s has no meaning). So every Locust
process also counts the SLO measurements (DECISION/green, REPLICATION/lag) per second and per rounded response
time, and writes them beside Locust's CSVs as PREFIX_latency.<pid>.csv (one file per process: with --processes
every worker writes its own). `read_latency_logs` merges them; `latency_percentile` answers over any span of seconds.

Response times are rounded as Locust rounds them for its own percentiles (whole ms below 100 ms, then 2 significant
digits), so these percentiles agree with Locust's stats table."""
from __future__ import annotations

import csv
import glob
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from loadtests.percentile import histogram_percentile

Key = tuple[str, str]
# (type, name) -> second -> rounded ms -> count
Histograms = dict[Key, dict[int, Counter]]

FIELDS = ("ts", "type", "name", "ms", "count")


def rounded_ms(ms: float) -> int:
    """Locust's rounding: exact below 100 ms, to 10 ms below 1 s, to 100 ms below 10 s, then to 1,000 ms."""
    if ms < 100:
        return int(round(ms))
    if ms < 1000:
        return int(round(ms, -1))
    if ms < 10000:
        return int(round(ms, -2))
    return int(round(ms, -3))


class LatencyLog:
    """Counts one process's measurements of `keys` per wall-clock second. Not thread-safe (Locust is gevent)."""

    def __init__(self, keys: Iterable[Key]):
        self.keys = frozenset(keys)
        self.counts: Counter = Counter()  # (ts, type, name, rounded ms) -> count

    def record(self, request_type: str, name: str, ms: float, ts: float) -> None:
        if (request_type, name) in self.keys:
            self.counts[(int(ts), request_type, name, rounded_ms(ms))] += 1

    def write(self, path: Path) -> None:
        """Write every count so far (replacing the file), in one rename so a reader never sees half of it."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(FIELDS)
            for (ts, typ, name, ms), n in sorted(self.counts.items()):
                out.writerow((ts, typ, name, ms, n))
        os.replace(tmp, path)


def log_path(prefix: str, pid: int | None = None) -> Path:
    return Path(f"{prefix}_latency.{pid if pid is not None else os.getpid()}.csv")


def read_latency_logs(prefix: Path | str) -> Histograms:
    """Merge every PREFIX_latency.*.csv; {} when there are none (an older run, or Locust without the locustfile)."""
    merged: Histograms = {}
    for path in sorted(glob.glob(f"{glob.escape(str(prefix))}_latency.*.csv")):
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    per_s = merged.setdefault((row["type"], row["name"]), {})
                    per_s.setdefault(int(row["ts"]), Counter())[int(row["ms"])] += int(row["count"])
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a latency log ({exc})") from None
    return merged


def latency_percentile(histograms: Histograms, key: Key, p: float, after_ts: int | None = None,
                       until_ts: int | None = None) -> float | None:
    """The p-th percentile (0 < p <= 100, loadtests.percentile's definition: Locust's own for 50/90/95/99) of `key`
    over the seconds after_ts < ts <= until_ts (None: unbounded); None without samples."""
    merged: Counter = Counter()
    for ts, counts in histograms.get(key, {}).items():
        if (after_ts is None or ts > after_ts) and (until_ts is None or ts <= until_ts):
            merged.update(counts)
    return histogram_percentile(merged, p)
