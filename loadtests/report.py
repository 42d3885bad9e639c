"""The planners' capacity report (DESIGN.md §2): one self-contained report.html with the verdict line, the SLO table,
the knee, the run's parameters and plots over time; the plots are also written as PNGs beside it.

    python -m loadtests.report PREFIX [--slo config/slo.yaml] [--out DIR] [--multiplier 3] [--steps 1x,2x,3x]
                                      [--capacity config/capacity.yaml] [--require-all]

reads Locust's PREFIX_stats.csv / PREFIX_stats_history.csv, prints a verdict per SLO and exits 1 when one fails.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from loadtests.slo import (AGGREGATED, DECISION, LAG, MEASUREMENT_TYPES, Knee, RunStats, Verdict, _fmt,
                           find_knee, freeze_events, load_slos, overall_exit_code, read_locust_csv, verdicts)

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


def _draw(plt, name: str, title: str, ylabel: str, s: dict, lines, slo: float | None, markers, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    for key, label, style in lines:
        ax.plot(s["t"], s[key], style, label=label, linewidth=1.5)
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


def write_plots(stats: RunStats, slos_targets: dict, params: dict, out_dir: Path) -> dict[str, Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = _series(stats)
    markers = _markers(stats, params)
    err_pct = dict(s, err=[e * 100 for e in s["err"]])
    specs = {
        "throughput": ("Throughput", "per second", s, [("rps", "requests/s", "-"), ("dps", "green decisions/s", "-")],
                       None),
        "latency": ("Green-lane decision latency", "ms", s,
                    [("p50", "p50", "-"), ("p95", "p95", "-"), ("p99", "p99", "-")],
                    slos_targets.get("green_decision_p99_ms")),
        "error_rate": ("Error rate", "% of requests", err_pct, [("err", "errors", "-")],
                       (slos_targets["error_rate_max"] * 100) if "error_rate_max" in slos_targets else None),
        "replication_lag": ("Replication lag", "ms", s,
                            [("lag50", "p50", "-"), ("lag99", "p99", "-"), ("lagmax", "max", "-")],
                            slos_targets.get("replication_lag_p99_ms")),
    }
    paths = {}
    for name, (title, ylabel, data, lines, slo) in specs.items():
        path = out_dir / f"{name}.png"
        _draw(plt, name, title, ylabel, data, lines, slo, markers, path)
        paths[name] = path
    return paths


# -------------------------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px;color:#222}
.verdict{font-size:1.8em;font-weight:bold;padding:.5em .7em;border-radius:6px;color:#fff}
.pass{background:#27ae60}.fail{background:#c0392b}.nm{background:#f39c12}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:left}
tr.pass td.v{background:#d5f5e3}tr.fail td.v{background:#fadbd8}tr.nm td.v{background:#fdebd0}
.knee{font-size:1.2em;margin:1em 0}img{max-width:100%;display:block;margin:.5em 0}
"""


def _row_class(v: Verdict) -> str:
    return "pass" if v.passed else ("fail" if v.passed is False else "nm")


def write_report(stats: RunStats, results: Sequence[Verdict], knee: Knee | None, params: dict,
                 out_dir: Path | str) -> Path:
    """Write out_dir/report.html (self-contained: PNGs embedded) and the PNGs beside it; return the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {v.name: v.target for v in results}
    pngs = write_plots(stats, targets, params, out_dir) if stats.history else {}
    line = verdict_line(results, params)
    cls = "fail" if line.startswith("FAIL") else ("nm" if any(v.passed is None for v in results) else "pass")
    e = html.escape
    table = "".join(
        f"<tr class='{_row_class(v)}'><td>{e(v.name)}</td><td>{e(_fmt(v.target, v.unit))}</td>"
        f"<td>{e(_fmt(v.measured, v.unit)) if v.measured is not None else 'not measured'}</td>"
        f"<td class='v'>{'PASS' if v.passed else ('FAIL' if v.passed is False else 'NOT MEASURED')}</td>"
        f"<td>{e(v.note)}</td></tr>" for v in results)
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
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>Capacity report</title><style>{_CSS}</style></head>
<body><h1>Capacity load test report</h1>
<div class="verdict {cls}" id="verdict">{e(line)}</div>
<h2>SLOs</h2><table id="slo-table"><tr><th>SLO</th><th>target</th><th>measured</th><th>verdict</th><th>note</th></tr>{table}</table>
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
    knee = find_knee(stats, slos, a.steps.split(",") if a.steps else None, design)
    params = {"multiplier": a.multiplier, "slo file": a.slo, "markers": markers}
    path = write_report(stats, results, knee, params, Path(a.out) if a.out else Path(f"{a.prefix}_report"))
    for v in results:
        status = "PASS" if v.passed else ("FAIL" if v.passed is False else "NOT MEASURED")
        print(f"{status:12} {v.name:24} {v.note}")
    print(verdict_line(results, params))
    print(knee_sentence(knee, stats))
    print(f"report: {path}")
    return overall_exit_code(results, require_all=a.require_all)


if __name__ == "__main__":
    sys.exit(main())
