"""The drill's timeline: per-second series from the run folder's plain values (pure), and the one stacked PNG that
shows them against every step's span (drawn with matplotlib's Agg backend).

x is always seconds since the drill's start (t0). A series covers only the seconds its source has: Locust's history
rows, the latency log's seconds, the sampler's lines; client errors are counted on every second of the drill so that
quiet seconds read as 0, not as a gap."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.latency_log import Histograms, latency_percentile
from loadtests.slo import DECISION

NAN = float("nan")


@dataclass(frozen=True)
class Timeline:
    """Per-second series, each a pair of lists (x in seconds since t0, values; NaN where a value is unknown)."""

    load_t: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    fps: list[float] = field(default_factory=list)
    latency_t: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p95: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    errors_t: list[float] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    sample_t: list[float] = field(default_factory=list)
    lag_s: list[float] = field(default_factory=list)
    front_held: list[float] = field(default_factory=list)
    site_held: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Span:
    """One step on the x axis: its own span and, when it had them, its freeze window and its outage window (kill -9
    to the first write acknowledged by the new primary). Ends are None when the step never ended (interrupted)."""

    n: int
    label: str
    start: float
    end: float | None
    freeze: tuple[float, float] | None = None
    outage: tuple[float, float] | None = None
    cost: str = ""  # e.g. "freeze 0.42 s", "RTO 3.20 s"
    missed: bool = False  # a figure of the step missed its target


def _num(value) -> float:
    return NAN if value is None else float(value)


def load_series(history: Iterable[tuple[float, float | None, float | None]], t0: float
                ) -> tuple[list[float], list[float], list[float]]:
    """(x, requests/s, failures/s) from Locust's Aggregated history rows given as (unix ts, requests/s, failures/s).
    Locust writes one row a second; a repeated second keeps its last row (the newest rolling window)."""
    by_ts = {int(ts): (rps, fps) for ts, rps, fps in history}
    xs = sorted(by_ts)
    return ([x - t0 for x in xs], [_num(by_ts[x][0]) for x in xs], [_num(by_ts[x][1]) for x in xs])


def latency_series(hist: Histograms, t0: float, key=DECISION, ps: Sequence[float] = (50, 95, 99)
                   ) -> tuple[list[float], list[list[float]]]:
    """(x, [one list per p in ps]): each second's exact percentiles of `key` (ms) from the latency log."""
    seconds = sorted(hist.get(key, {}))
    out: list[list[float]] = [[] for _ in ps]
    for ts in seconds:
        # The one-second slice gives the same answer as after_ts=ts-1, until_ts=ts over the whole log, without
        # walking every second of the drill for every second of it.
        one = {key: {ts: hist[key][ts]}}
        for i, p in enumerate(ps):
            out[i].append(_num(latency_percentile(one, key, p, after_ts=ts - 1, until_ts=ts)))
    return [ts - t0 for ts in seconds], out


def event_series(events: Iterable[Mapping], t0: float, t_end: float) -> tuple[list[float], list[int], list[int]]:
    """(x, client errors, retried requests) per second over every second from t0 to t_end (inclusive), from the
    client's events ({"kind": "failure" | "retried" | ..., "at": unix}); events outside the drill are dropped."""
    failures, retried = Counter(), Counter()
    for ev in events:
        at = ev.get("at")
        if at is None:
            continue
        counter = failures if ev.get("kind") == "failure" else retried if ev.get("kind") == "retried" else None
        if counter is not None:
            counter[int(at)] += 1
    first, last = int(t0), int(t_end)
    seconds = range(first, last + 1) if last >= first else range(0)
    return ([s - t0 for s in seconds], [failures[s] for s in seconds], [retried[s] for s in seconds])


def sample_series(samples: Iterable[Mapping], t0: float
                  ) -> tuple[list[float], list[float], list[float], list[float]]:
    """(x, lag s, front held, site held) from the sampler's lines, in time order; a null lag (no stream, e.g.
    right after the kill) stays NaN so the line breaks there."""
    rows = sorted((s for s in samples if s.get("at") is not None), key=lambda s: s["at"])
    return ([s["at"] - t0 for s in rows], [_num(s.get("lag_s")) for s in rows],
            [_num(s.get("front_held")) for s in rows], [_num(s.get("site_held")) for s in rows])


def timeline_series(t0: float, t_end: float, history: Iterable[tuple[float, float | None, float | None]] = (),
                    latency: Histograms | None = None, events: Iterable[Mapping] | None = None,
                    samples: Iterable[Mapping] = ()) -> Timeline:
    """Every series of the timeline, x in seconds since t0 (see the functions above for each input's shape).
    `events` None: the client's events are unknown (no ledger), so there is no error series at all; an empty
    list is a drill without a single client error (0 on every second)."""
    load_t, rps, fps = load_series(history, t0)
    latency_t, (p50, p95, p99) = latency_series(latency or {}, t0)
    errors_t, errors, retried = event_series(events, t0, t_end) if events is not None else ([], [], [])
    sample_t, lag, front, site = sample_series(samples, t0)
    return Timeline(load_t, rps, fps, latency_t, p50, p95, p99, errors_t, errors, retried, sample_t, lag, front,
                    site)


def _window(start, end, t0: float) -> tuple[float, float] | None:
    return (start - t0, end - t0) if start is not None and end is not None else None


def step_spans(steps: Iterable[Mapping], t0: float) -> list[Span]:
    """The spans of the steps that started (drill.json step records), x in seconds since t0."""
    out = []
    for s in steps:
        if s.get("started_at") is None:
            continue
        end = s.get("ended_at")
        figures = [(key, name) for key, name in (("freeze_s", "freeze"), ("rto_s", "RTO")) if s.get(key) is not None]
        targets = s.get("targets") or {}
        missed = any(s.get(k) is not None and s[k] > t for k, t in targets.items())
        out.append(Span(int(s["n"]), f"{s['n']} {s['id']}", s["started_at"] - t0,
                        None if end is None else end - t0, _window(s.get("frozen_at"), s.get("resumed_at"), t0),
                        _window(s.get("killed_at"), s.get("recovered_at"), t0),
                        ", ".join(f"{name} {s[key]:.2f} s" for key, name in figures), missed))
    return out


# ------------------------------------------------------------------------------------------------------------ drawing
STEP_COLORS = ("#d6eaf8", "#fdebd0")  # alternate so neighbouring steps stay apart
FREEZE_COLOR, OUTAGE_COLOR, SLO_COLOR = "#8e44ad", "#c0392b", "#c0392b"


LABEL_ROOM = 0.09  # of the x axis: a label whose centre is closer than this to the last one's goes a row up


def label_rows(centres: Sequence[float], width: float, room: float = LABEL_ROOM) -> list[int]:
    """The row (0 = lowest) of each step's label, so labels of neighbouring short steps (a failover of seconds next
    to its failback) do not print over each other: a label goes one row above the last one when their centres are
    closer than `room` of the axis' `width`."""
    rows: list[int] = []
    for i, x in enumerate(centres):
        crowded = i > 0 and width > 0 and (x - centres[i - 1]) / width < room
        rows.append(rows[-1] + 1 if crowded else 0)
    return rows


def _mark_steps(ax, spans: Sequence[Span], x_end: float, label_steps: bool) -> None:
    centres = [(sp.start + (sp.end if sp.end is not None else x_end)) / 2 for sp in spans]
    rows = label_rows(centres, x_end)
    for i, sp in enumerate(spans):
        end = sp.end if sp.end is not None else x_end
        ax.axvspan(sp.start, end, color=STEP_COLORS[i % 2], alpha=0.8, zorder=0, linewidth=0)
        if sp.freeze:
            ax.axvspan(*sp.freeze, color=FREEZE_COLOR, alpha=0.35, zorder=1, linewidth=0)
        if sp.outage:
            ax.axvspan(*sp.outage, facecolor="none", edgecolor=OUTAGE_COLOR, hatch="///", zorder=1, linewidth=0)
        if label_steps:
            ax.annotate(sp.label + (f"\n{sp.cost}" if sp.cost else ""), (centres[i], 1.0),
                        xycoords=("data", "axes fraction"), xytext=(0, 4 + 24 * rows[i]), textcoords="offset points",
                        ha="center", va="bottom", fontsize=9, fontweight="bold", annotation_clip=False,
                        color=OUTAGE_COLOR if sp.missed else "#222")


def _log_ms_axis(ax) -> None:
    """A log y axis labelled 10, 20, 50, 100, … instead of 10^1, 2x10^1 (a planner reads ms, not exponents)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _no_data(ax, why: str) -> None:
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="#777")


def _legend_keys(spans: Sequence[Span]):
    from matplotlib.patches import Patch

    keys = [Patch(facecolor=STEP_COLORS[0], label="step span")]
    if any(sp.freeze for sp in spans):
        keys.append(Patch(facecolor=FREEZE_COLOR, alpha=0.35, label="intake frozen"))
    if any(sp.outage for sp in spans):
        keys.append(Patch(facecolor="none", edgecolor=OUTAGE_COLOR, hatch="///", label="kill -9 → recovered"))
    return keys


def _panels(tl: Timeline, green_slo_ms: float | None, lag_slo_s: float | None):
    """(title, ylabel, [(x, y, label, style)], hline, log y?, what is missing) per panel, top to bottom."""
    def finite(ys) -> bool:
        return any(not math.isnan(y) for y in ys)

    return [
        ("Load through the front", "per second",
         [(tl.load_t, tl.rps, "requests/s", "-"), (tl.load_t, tl.fps, "failures/s", "-")],
         None, False, None if tl.load_t else "no Locust history"),
        ("Green-lane decision latency (exact, per second)", "ms (log)",
         [(tl.latency_t, tl.p50, "p50", "-"), (tl.latency_t, tl.p95, "p95", "-"), (tl.latency_t, tl.p99, "p99", "-")],
         (green_slo_ms, f"SLO p99 {green_slo_ms:g} ms") if green_slo_ms else None, True,
         None if finite(tl.p99) else "no green decisions in the latency log"),
        ("Client errors and retried requests", "per second",
         [(tl.errors_t, tl.errors, "client errors", "bar"), (tl.errors_t, tl.retried, "retried (503)", "-")],
         None, False, None if tl.errors_t else "no client events"),
        ("Replication lag", "s",
         [(tl.sample_t, tl.lag_s, "standby lag", "-")],
         (lag_slo_s, f"SLO p99 {lag_slo_s:g} s") if lag_slo_s else None, False,
         None if finite(tl.lag_s) else "no lag samples"),
        ("Held requests", "requests",
         [(tl.sample_t, tl.front_held, "held at the front", "step"), (tl.sample_t, tl.site_held, "held at the sites",
                                                                       "step")],
         None, False, None if tl.sample_t else "no samples"),
    ]


def draw_timeline(tl: Timeline, spans: Sequence[Span], x_end: float, path: Path,
                  green_slo_ms: float | None = None, lag_slo_s: float | None = None) -> Path:
    """Write the stacked timeline PNG to `path` (shared x axis 0..x_end s) and return it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(tl, green_slo_ms, lag_slo_s)
    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(12, 2.3 * len(panels) + 0.8), dpi=100)
    for i, (ax, (title, ylabel, lines, hline, log, missing)) in enumerate(zip(axes, panels)):
        _mark_steps(ax, spans, x_end, label_steps=(i == 0))
        for x, y, label, style in lines:
            if not x:
                continue
            if style == "bar":
                ax.bar(x, y, width=1.0, color="#c0392b", label=label, zorder=2)
            elif style == "step":
                ax.step(x, y, where="post", linewidth=1.4, label=label, zorder=2)
            else:
                ax.plot(x, y, style, linewidth=1.3, label=label, zorder=2)
        if hline and not missing:
            ax.axhline(hline[0], color=SLO_COLOR, linestyle="--", linewidth=1.1, label=hline[1], zorder=3)
        if log and missing is None:
            _log_ms_axis(ax)
        elif not log:
            ax.set_ylim(bottom=0)
        if missing:
            _no_data(ax, missing)
        ax.set_title(title, loc="left", fontsize=10, pad=30 if i == 0 else 4)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3, zorder=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    axes[-1].set_xlim(0, max(x_end, 1.0))
    axes[-1].set_xlabel("seconds since the drill started")
    fig.legend(handles=_legend_keys(spans), loc="lower right", bbox_to_anchor=(0.99, 0.005), fontsize=8,
               ncol=3, frameon=False)
    # Fixed margins rather than tight_layout, which measured every label and took seconds: room on the right for
    # the legends, above the first panel for the step labels, below for the x label and the window keys.
    top = 1 - 0.75 / fig.get_figheight()
    fig.subplots_adjust(left=0.07, right=0.85, top=top, bottom=0.75 / fig.get_figheight(), hspace=0.32)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
