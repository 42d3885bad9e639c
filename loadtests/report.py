"""The planners' capacity report (DESIGN.md §2): one self-contained report.html with the verdict line, the SLO table,
the knee, the run's parameters and plots over time; the plots are also written as PNGs beside it.

    python -m loadtests.report PREFIX [--slo config/slo.yaml] [--out DIR] [--multiplier 3] [--steps 1x,2x,3x]
                                      [--capacity config/capacity.yaml] [--require-all]

reads Locust's PREFIX_stats.csv / PREFIX_stats_history.csv (and PREFIX_latency.*.csv), prints a verdict per SLO and
exits 1 when one fails; with --steps (a step ramp) it exits 1 only when even the first step broke an SLO.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from loadtests.slo import (AGGREGATED, DECISION, LAG, MEASUREMENT_TYPES, Knee, RunStats, Step, Verdict, _fmt,
                           describe_step, freeze_events, knee_of, load_slos, overall_exit_code, read_locust_csv,
                           steps_from_history, verdicts)

PLOTS = ("throughput", "latency", "error_rate", "replication_lag")


def verdict_line(results: Sequence[Verdict], params: dict) -> str:
    where = ""
    if params.get("multiplier") is not None:
        where = f" at {float(params['multiplier']):g}x design"
    elif params.get("load"):
        where = f" at {params['load']}"
    failed = [v for v in results if v.passed is False]
    unmeasured = [v for v in results if v.passed is None]
    met = [v for v in results if v.passed]
    if failed:
        why = "; ".join(f"{v.name} {v.note}" for v in failed)
        return f"FAIL: {len(failed)} of {len(results)} SLOs failed{where} ({why})"
    if unmeasured:
        names = ", ".join(v.name for v in unmeasured)
        return f"PASS: {len(met)} of {len(results)} SLOs met{where}; not measured: {names}"
    return f"PASS: all {len(results)} SLOs met{where}"


def knee_exit_code(knee: Knee | None) -> int:
    """A step ramp goes past the knee on purpose, so its whole-run verdicts are not its outcome: it fails (1) only
    when even the first plateau broke an SLO, i.e. there is no load at which the site held."""
    return 1 if knee is not None and knee.last_good is None else 0


def knee_sentence(knee: Knee | None, stats: RunStats) -> str:
    if knee is not None:
        return knee.sentence()
    if not stats.history:
        return "Knee: not computed (no stats history; run Locust with --csv-full-history)."
    return "No knee: every SLO held on every load step of this run."


# ------------------------------------------------------------------------------------------------------------ series
def _series(stats: RunStats):
    """Per-second series, x = seconds since the first history row."""
    t0 = stats.start_ts or 0
    by_ts: dict[int, list] = {}
    for h in stats.history:
        by_ts.setdefault(h.ts, []).append(h)
    xs = sorted(by_ts)
    s: dict[str, list] = {k: [] for k in ("t", "rps", "fps", "dps", "p50", "p95", "p99", "err", "lag50", "lag99",
                                          "lagmax")}
    for ts in xs:
        rows = by_ts[ts]
        req = [h for h in rows if h.key != AGGREGATED and h.type not in MEASUREMENT_TYPES]
        rps = sum(h.requests_per_s or 0.0 for h in req)
        fps = sum(h.failures_per_s or 0.0 for h in req)
        dec = next((h for h in rows if h.key == DECISION), None)
        lag = next((h for h in rows if h.key == LAG), None)
        s["t"].append(ts - t0)
        s["rps"].append(rps)
        s["fps"].append(fps)
        s["dps"].append(dec.requests_per_s if dec and dec.requests_per_s is not None else float("nan"))
        for p, key in (("50%", "p50"), ("95%", "p95"), ("99%", "p99")):
            v = dec.pct(p) if dec else None
            s[key].append(v if v is not None else float("nan"))
        s["err"].append(fps / rps if rps > 0 else float("nan"))
        for p, key in (("50%", "lag50"), ("99%", "lag99"), ("100%", "lagmax")):
            v = lag.pct(p) if lag else None
            s[key].append(v if v is not None else float("nan"))
    return s


def _markers(stats: RunStats, params: dict) -> list[tuple[float, str, str]]:
    """(seconds since start, label, kind) for freezes (from the run) and failovers etc. (from params["markers"])."""
    t0 = stats.start_ts or 0
    out = [(ts - t0, f"freeze {d:.1f} s", "freeze") for ts, d in freeze_events(stats.history)]
    for m in params.get("markers") or []:
        out.append((float(m["at"]) - t0, str(m.get("label", "event")), str(m.get("kind", "failover"))))
    return out


def _draw(plt, name: str, title: str, ylabel: str, s: dict, lines, slo: float | None, markers, path: Path,
          plateaus: Sequence[tuple[float, float, float]] = ()) -> None:
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    for key, label, style in lines:
        ax.plot(s["t"], s[key], style, label=label, linewidth=1.5)
    for i, (x0, x1, y) in enumerate(plateaus):
        ax.hlines(y, x0, x1, colors="#111", linewidth=2.5, label="p99 per load step" if i == 0 else None)
    if slo is not None:
        ax.axhline(slo, color="#c0392b", linestyle="--", linewidth=1.2, label=f"SLO {slo:g}")
    for x, label, kind in markers:
        color = "#8e44ad" if kind == "freeze" else "#e67e22"
        ax.axvline(x, color=color, linestyle=":", linewidth=1.5)
        ax.annotate(label, (x, 1), xycoords=("data", "axes fraction"), xytext=(3, -12), textcoords="offset points",
                    fontsize=8, color=color)
    ax.set_title(title)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def write_plots(stats: RunStats, slos_targets: dict, params: dict, out_dir: Path,
                steps: Sequence[Step] = ()) -> dict[str, Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = _series(stats)
    markers = _markers(stats, params)
    err_pct = dict(s, err=[e * 100 for e in s["err"]])
    specs = {
        "throughput": ("Throughput", "per second", s, [("rps", "requests/s", "-"), ("dps", "green decisions/s", "-")],
                       None),
        "latency": ("Green-lane decision latency (lines: Locust's rolling 10 s window)", "ms", s,
                    [("p50", "p50", "-"), ("p95", "p95", "-"), ("p99", "p99", "-")],
                    slos_targets.get("green_decision_p99_ms")),
        "error_rate": ("Error rate", "% of requests", err_pct, [("err", "errors", "-")],
                       (slos_targets["error_rate_max"] * 100) if "error_rate_max" in slos_targets else None),
        "replication_lag": ("Replication lag", "ms", s,
                            [("lag50", "p50", "-"), ("lag99", "p99", "-"), ("lagmax", "max", "-")],
                            slos_targets.get("replication_lag_p99_ms")),
    }
    t0 = stats.start_ts or 0
    plateaus = [(st.start_ts - t0, st.end_ts - t0, st.green_p99_ms) for st in steps if st.green_p99_ms is not None]
    paths = {}
    for name, (title, ylabel, data, lines, slo) in specs.items():
        path = out_dir / f"{name}.png"
        _draw(plt, name, title, ylabel, data, lines, slo, markers, path, plateaus if name == "latency" else ())
        paths[name] = path
    return paths


# -------------------------------------------------------------------------------------------------------------- HTML
CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px;color:#222}
.verdict{font-size:1.8em;font-weight:bold;padding:.5em .7em;border-radius:6px;color:#fff}
.verdict.pass{background:#27ae60}.verdict.fail{background:#c0392b}.verdict.nm{background:#f39c12}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:left}
tr.pass td.v{background:#d5f5e3}tr.fail td.v{background:#fadbd8}tr.nm td.v{background:#fdebd0}
.knee{font-size:1.2em;margin:1em 0}img{max-width:100%;display:block;margin:.5em 0}
"""


def _row_class(v: Verdict) -> str:
    return "pass" if v.passed else ("fail" if v.passed is False else "nm")


def html_table(table_id: str, headers: Sequence[str], rows: Sequence[tuple[str, Sequence[str], str]]) -> str:
    """An HTML table; each row is (css class, cells, verdict cell), all plain text (escaped here)."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join(f"<tr class='{cls}'>" + "".join(f"<td>{e(c)}</td>" for c in cells) + f"<td class='v'>{e(v)}</td>"
                   + "</tr>" for cls, cells, v in rows)
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


def _steps_table(steps: Sequence[Step]) -> str:
    return html_table("steps", ("load step", "s", "green p99", "errors", "lag p99", "SLOs"), [
        ("fail" if st.broken else "pass",
         (describe_step(st), f"{st.seconds:.0f}", _ms(st.green_p99_ms),
          "" if st.error_rate is None else f"{st.error_rate * 100:.2f}%", _ms(st.lag_p99_ms)),
         "broke: " + ", ".join(b[0] for b in st.broken) if st.broken else "held") for st in steps])


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f} ms"


def write_report(stats: RunStats, results: Sequence[Verdict], knee: Knee | None, params: dict,
                 out_dir: Path | str, steps: Sequence[Step] = ()) -> Path:
    """Write out_dir/report.html (self-contained: PNGs embedded) and the PNGs beside it; return the HTML path.
    With `steps` (a step ramp) the headline is the knee and each load step gets a row with its exact p99s; the
    whole-run SLO table stays, marked as such (the ramp goes past the knee on purpose)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {v.name: v.target for v in results}
    pngs = write_plots(stats, targets, params, out_dir, steps) if stats.history else {}
    if steps:
        line = knee_sentence(knee, stats)
        cls = "fail" if knee_exit_code(knee) else "pass"
    else:
        line = verdict_line(results, params)
        cls = "fail" if line.startswith("FAIL") else ("nm" if any(v.passed is None for v in results) else "pass")
    e = html.escape
    table = html_table("slo-table", ("SLO", "target", "measured", "note", "verdict"), [
        (_row_class(v), (v.name, _fmt(v.target, v.unit),
                         _fmt(v.measured, v.unit) if v.measured is not None else "not measured", v.note),
         "PASS" if v.passed else ("FAIL" if v.passed is False else "NOT MEASURED")) for v in results])
    shown = {k: v for k, v in params.items() if k != "markers" and v is not None}
    shown.update({"locust prefix": stats.prefix, "client requests": stats.requests, "failures": stats.failures})
    if stats.history:
        shown["duration s"] = (stats.end_ts or 0) - (stats.start_ts or 0) + 1
    prows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(v if isinstance(v, str) else json.dumps(v, default=str))}</td></tr>"
                    for k, v in shown.items())
    marks = _markers(stats, params)
    mlist = "".join(f"<li>{e(label)} at +{x:.0f} s ({e(kind)})</li>" for x, label, kind in marks)
    imgs = "".join(
        f"<h3>{e(name.replace('_', ' '))}</h3><img alt='{e(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(p.read_bytes()).decode()}'>" for name, p in pngs.items())
    if not pngs:
        imgs = "<p>No plots: the run has no stats history (run Locust with --csv-full-history).</p>"
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>Capacity report</title><style>{CSS}</style></head>
<body><h1>Capacity load test report</h1>
<div class="verdict {cls}" id="verdict">{e(line)}</div>
<h2>{'Load steps' if steps else 'SLOs'}</h2>{_steps_table(steps) if steps else ''}
{'<h3>SLOs over the whole ramp (past the knee on purpose)</h3>' if steps else ''}{table}
<h2>Knee of the curve</h2><p class="knee" id="knee">{e(knee_sentence(knee, stats))}</p>
<h2>Plots</h2>{imgs}
<h2>Events</h2><ul>{mlist or '<li>none</li>'}</ul>
<h2>Run parameters</h2><table id="params">{prows}</table>
</body></html>"""
    path = out_dir / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prefix", help="Locust --csv PREFIX")
    ap.add_argument("--slo", default="config/slo.yaml")
    ap.add_argument("--out", default=None, help="report directory (default: PREFIX_report)")
    ap.add_argument("--multiplier", type=float, default=None, help="load over design of the run, e.g. 3")
    ap.add_argument("--steps", default=None, help="labels of the step plateaus, comma-separated, e.g. 1x,2x,3x")
    ap.add_argument("--capacity", default=None, help="config/capacity.yaml, to express step rates over design")
    ap.add_argument("--markers", default=None, help="JSON file: list of {at: epoch_s, label: ...}")
    ap.add_argument("--require-all", action="store_true", help="an SLO not measured fails the run")
    a = ap.parse_args(argv)
    try:
        slos = load_slos(a.slo)
        stats = read_locust_csv(a.prefix)
        design = None
        if a.capacity:
            from loadtests.capacity import load_capacity
            design = load_capacity(Path(a.capacity))
        markers = json.loads(Path(a.markers).read_text(encoding="utf-8")) if a.markers else []
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = verdicts(stats, slos)
    labels = a.steps.split(",") if a.steps else None
    steps = steps_from_history(stats.history, slos, labels, design, stats.latency)
    knee = knee_of(steps)
    steps = steps if labels else ()  # the per-step table and the knee headline are for declared ramps
    params = {"multiplier": a.multiplier, "slo file": a.slo, "markers": markers}
    path = write_report(stats, results, knee, params, Path(a.out) if a.out else Path(f"{a.prefix}_report"), steps)
    for v in results:
        status = "PASS" if v.passed else ("FAIL" if v.passed is False else "NOT MEASURED")
        print(f"{status:12} {v.name:24} {v.note}")
    print(verdict_line(results, params))
    print(knee_sentence(knee, stats))
    print(f"report: {path}")
    return knee_exit_code(knee) if steps else overall_exit_code(results, require_all=a.require_all)


if __name__ == "__main__":
    sys.exit(main())
