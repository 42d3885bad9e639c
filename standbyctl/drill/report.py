"""The drill's report: one HTML page, DIR/report.html, with the timeline PNG beside it (DIR/timeline.png, linked by
a relative src), from the run folder the drill writes (the contract: DIR/drill.json, DIR/samples.jsonl, Locust's
DIR/locust_stats_history.csv and DIR/locust_latency.*.csv, the client's DIR/ledger/events.*.jsonl).

Top to bottom: the verdict line (green PASS / red FAIL, with the reasons), a row per step (where it happened and what
it cost; a figure that missed its step's target is highlighted), the timeline of the whole drill, the SLO verdicts,
the run's parameters. A drill stopped early still gets a page: whatever is missing is named on it. The page is plain
HTML with inline CSS: no script, nothing fetched from elsewhere."""
from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from loadtests.latency_log import Histograms, read_latency_logs
from loadtests.report import CSS, html_table
from loadtests.slo import AGGREGATED, read_history
from standbyctl.drill.judge import read_jsonl
from standbyctl.drill.timeline import draw_timeline, step_spans, timeline_series

# DESIGN §4 (config/slo.yaml), for the lines on the timeline when the drill's params do not carry its own.
DEFAULT_GREEN_P99_MS = 100.0
DEFAULT_LAG_P99_MS = 500.0

_DRILL_CSS = """
body{max-width:1400px}
table#steps td,table#steps th{font-size:.92em;vertical-align:top}
table#steps thead th{background:#f4f6f7}
tr.skipped td{color:#999}tr.failed td.status{background:#fadbd8;font-weight:bold}
tr.interrupted td.status{background:#fdebd0;font-weight:bold}tr.done td.status{color:#1e8449;font-weight:bold}
td.miss{background:#fadbd8;color:#922b21;font-weight:bold}td.warn{background:#fef5e7;color:#9c640c}
td .sub{display:block;color:#777;font-size:.85em}
.reasons{margin:.4em 0 1em 1.2em}.missing{background:#fef9e7;border:1px solid #f4d03f;padding:.5em 1em}
"""


@dataclass
class RunFolder:
    """What the report reads from the run folder; `missing` names every input that was absent or unreadable."""

    drill: dict
    history: list[tuple[float, float | None, float | None]] = field(default_factory=list)
    latency: Histograms = field(default_factory=dict)
    events: list[dict] | None = None  # None: no ledger folder, the client's errors are unknown
    samples: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------- reading
def read_drill(path: Path) -> dict:
    """DIR/drill.json: FileNotFoundError when absent, ValueError naming the file when it is not a drill record."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no drill record there (is this a drill's work folder?)")
    try:
        drill = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(drill, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(drill).__name__}")
    for key, kind in (("params", dict), ("steps", list), ("slos", list)):
        if not isinstance(drill.get(key, kind()), kind):
            raise ValueError(f"{path}: '{key}' must be a JSON {'object' if kind is dict else 'array'}")
    for i, step in enumerate(drill.get("steps", [])):
        if not isinstance(step, dict) or "n" not in step or "id" not in step:
            raise ValueError(f"{path}: steps[{i}] is not a step record (needs at least 'n' and 'id')")
    return drill


def read_run_folder(workdir: Path) -> RunFolder:
    """Every input of the report; only drill.json is required (see read_drill)."""
    run = RunFolder(read_drill(workdir / "drill.json"))
    samples = workdir / "samples.jsonl"
    run.samples = read_jsonl(samples)
    if not run.samples:
        run.missing.append(f"{samples.name}: {'empty' if samples.is_file() else 'absent'} (no lag or held "
                           f"requests over time)")
    hpath = workdir / "locust_stats_history.csv"
    try:
        rows = read_history(hpath) if hpath.is_file() and hpath.stat().st_size else []
        run.history = [(h.ts, h.requests_per_s, h.failures_per_s) for h in rows if h.name == AGGREGATED[1]]
    except ValueError as exc:
        run.missing.append(f"{hpath.name}: unreadable ({exc})")
    else:
        if not run.history:
            run.missing.append(f"{hpath.name}: {'no Aggregated rows' if hpath.is_file() else 'absent'} "
                               f"(no throughput over time)")
    try:
        run.latency = read_latency_logs(workdir / "locust")
    except ValueError as exc:
        run.missing.append(f"latency log unreadable ({exc})")
    if not run.latency:
        run.missing.append("locust_latency.*.csv: absent or empty (no decision latency over time)")
    ledger = workdir / "ledger"
    if ledger.is_dir():
        # Imported here: bench_switchover brings the whole benchmark stack, which a report of a finished run
        # otherwise never needs.
        from standbyctl.bench_switchover import read_ledger
        run.events = read_ledger(ledger)[1]
    else:
        run.missing.append("ledger/: absent (client errors over time unknown)")
    return run


# ------------------------------------------------------------------------------------------------------- formatting
def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().strftime("%H:%M:%S")


def _secs(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def drill_window(drill: Mapping, data_ts: Sequence[float] = ()) -> tuple[float | None, float | None]:
    """(t0, t_end) of the drill in unix s: params' started_at/ended_at, else the steps' and the data's extremes."""
    params = drill.get("params") or {}
    steps = drill.get("steps") or []
    starts = [s["started_at"] for s in steps if s.get("started_at") is not None]
    ends = [s[k] for s in steps for k in ("started_at", "frozen_at", "resumed_at", "killed_at", "recovered_at",
                                          "ended_at") if s.get(k) is not None]
    t0 = params.get("started_at")
    if t0 is None:
        t0 = min([*starts, *data_ts], default=None)
    t_end = params.get("ended_at")
    if t_end is None:
        t_end = max([*ends, *data_ts], default=t0)
    return t0, t_end


def target_misses(step: Mapping) -> dict[str, str]:
    """{figure key: "≤ target"} for each of step["targets"] the step's measured figure exceeded."""
    return {key: f"target ≤ {target:g} s" for key, target in (step.get("targets") or {}).items()
            if step.get(key) is not None and step[key] > target}


def _cell(text: str, sub: str = "", cls: str = "") -> str:
    e = html.escape
    extra = f"<span class='sub'>{e(sub)}</span>" if sub else ""
    return f"<td class='{cls}'>{e(text)}{extra}</td>" if cls else f"<td>{e(text)}{extra}</td>"


def _figure(step: Mapping, key: str, misses: Mapping[str, str]) -> str:
    target = (step.get("targets") or {}).get(key)
    sub = misses.get(key) or (f"target ≤ {target:g} s" if target is not None else "")
    return _cell(_secs(step.get(key)), sub, "miss" if key in misses else "")


def _rpo(step: Mapping) -> str:
    before, after = step.get("rpo_lost"), step.get("rpo_lost_after_reconcile")
    if before is None and after is None:
        return _cell("—")
    text = f"{'—' if before is None else before} → {'—' if after is None else after}"
    subs = []
    if step.get("rpo_listed_exactly") is not None:
        subs.append("listed exactly" if step["rpo_listed_exactly"] else "NOT listed exactly")
    if step.get("conflicts"):
        subs.append(f"{step['conflicts']} conflicts for review")
    bad = step.get("rpo_listed_exactly") is False or (after or 0) > (step.get("conflicts") or 0)
    return _cell(text, ", ".join(subs), "miss" if bad else "")


# DESIGN §4: a planned switchover (the org restructure's too) owes the clients 0 errors; a failover's are its cost.
ZERO_ERROR_RUNBOOKS = ("switchover", "org-restructure-via-switchover")


def _errors_class(step: Mapping) -> str:
    if not step.get("client_errors"):
        return ""
    return "miss" if step.get("runbook") in ZERO_ERROR_RUNBOOKS or "client_errors" in (step.get("targets") or {}) \
        else "warn"


def _ledger_class(step: Mapping) -> str:
    """Red when the ledger check failed, amber when what it lost is the step's RPO (a failover's, counted there)."""
    if step.get("ledger_ok") is not False:
        return ""
    return "warn" if step.get("rpo_lost") else "miss"


def step_row(step: Mapping, t0: float | None) -> str:
    """One <tr> of the step table (cells in the order of STEP_HEADERS)."""
    status = str(step.get("status") or "unknown")
    misses = target_misses(step)
    started, ended = step.get("started_at"), step.get("ended_at")
    start = (_cell(_clock(started), f"+{started - t0:.1f} s" if t0 is not None else "")
             if started is not None else _cell("—"))
    duration = _secs(ended - started) if started is not None and ended is not None else "—"
    notes = [f"error: {step['error']}"] if step.get("error") else []
    notes += [step["note"]] if step.get("note") else []
    notes += [f"missed {k} ({v})" for k, v in misses.items() if k not in ("freeze_s", "rto_s")]
    verify = str(step.get("verify") or "—")
    ledger = str(step.get("ledger") or "—")
    cells = [
        _cell(str(step.get("n", ""))),
        _cell(str(step.get("title") or step.get("id")), " · ".join([str(step.get("id")), *notes])),
        f"<td class='status'>{html.escape(status)}</td>",
        start,
        _cell(duration),
        _figure(step, "freeze_s", misses),
        _figure(step, "rto_s", misses),
        _rpo(step),
        _cell(f"{step.get('held_front', 0) or 0} / {step.get('held_site', 0) or 0}"),
        _cell(str(step.get("client_errors", 0) or 0), f"{step.get('retried', 0) or 0} retried",
              _errors_class(step)),
        _cell(verify, cls="miss" if verify == "differences" else ""),
        _cell(ledger, cls=_ledger_class(step)),
    ]
    return f"<tr class='{html.escape(status)}'>{''.join(cells)}</tr>"


STEP_HEADERS = ("#", "step", "status", "start", "duration", "freeze", "RTO", "RPO lost: before → after reconcile",
                "held front / sites", "client errors", "verify", "ledger")


def steps_table(steps: Sequence[Mapping], t0: float | None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in STEP_HEADERS)
    body = "".join(step_row(s, t0) for s in steps) or (
        f"<tr><td colspan='{len(STEP_HEADERS)}'>no steps recorded</td></tr>")
    return f'<table id="steps"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def slos_table(slos: Sequence[Mapping]) -> str:
    rows = [("pass" if s.get("passed") else "fail" if s.get("passed") is False else "nm",
             (str(s.get("name", "")), str(s.get("target", "")), str(s.get("measured") or "not measured")),
             "PASS" if s.get("passed") else "FAIL" if s.get("passed") is False else "NOT MEASURED") for s in slos]
    return html_table("slos", ("SLO", "target", "measured", "verdict"), rows)


def _param_value(key: str, value) -> str:
    if key in ("started_at", "ended_at") and isinstance(value, (int, float)):
        return f"{datetime.fromtimestamp(value).astimezone():%Y-%m-%d %H:%M:%S %Z} ({value})"
    if value is None:
        return "—"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def params_table(params: Mapping) -> str:
    e = html.escape
    rows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(_param_value(str(k), v))}</td></tr>" for k, v in params.items())
    return f'<table id="params">{rows or "<tr><td>no parameters recorded</td></tr>"}</table>'


def verdict_block(verdict: Mapping | None) -> str:
    e = html.escape
    if not verdict or verdict.get("passed") is None:
        line = (verdict or {}).get("line") or "NO VERDICT: the drill has not finished (this is the report so far)"
        return f'<div class="verdict nm" id="verdict">{e(line)}</div>'
    cls = "pass" if verdict["passed"] else "fail"
    line = verdict.get("line") or ("PASS" if verdict["passed"] else "FAIL")
    reasons = "".join(f"<li>{e(str(r))}</li>" for r in verdict.get("reasons") or [])
    return (f'<div class="verdict {cls}" id="verdict">{e(line)}</div>'
            + (f'<ul class="reasons" id="reasons">{reasons}</ul>' if reasons else ""))


# ------------------------------------------------------------------------------------------------------------ page
def _slo_lines(params: Mapping, slo_targets: Mapping | None) -> tuple[float, float]:
    src = {**params, **(slo_targets or {})}
    green = float(src.get("green_decision_p99_ms") or DEFAULT_GREEN_P99_MS)
    lag = float(src.get("replication_lag_p99_ms") or DEFAULT_LAG_P99_MS) / 1000.0
    return green, lag


def _timeline(run: RunFolder, workdir: Path, t0: float | None, t_end: float | None,
              slo_targets: Mapping | None) -> str:
    if t0 is None:
        return "<p class='missing'>No timeline: no step started and no load was recorded.</p>"
    tl = timeline_series(t0, t_end, run.history, run.latency, run.events, run.samples)
    spans = step_spans(run.drill.get("steps") or [], t0)
    green, lag = _slo_lines(run.drill.get("params") or {}, slo_targets)
    path = draw_timeline(tl, spans, max(t_end - t0, 1.0), workdir / "timeline.png", green, lag)
    return (f"<img id='timeline' src='{html.escape(path.name)}' alt='timeline of the drill: load, decision latency,"
            f" client errors, replication lag and held requests, with every step marked'>")


def write_report(workdir: Path, slo_targets: Mapping[str, float] | None = None) -> Path:
    """Write workdir/report.html and workdir/timeline.png from the run folder and return the HTML's path.
    Only workdir/drill.json is required (FileNotFoundError when absent, ValueError naming it when malformed);
    any other input missing or empty is named on the page. `slo_targets` (green_decision_p99_ms,
    replication_lag_p99_ms, as in config/slo.yaml) places the SLO lines on the timeline; default: the drill's
    params' keys of those names, else DESIGN §4 (100 ms, 500 ms)."""
    workdir = Path(workdir)
    run = read_run_folder(workdir)
    drill = run.drill
    data_ts = [ts for ts, _, _ in run.history] + [s["at"] for s in run.samples if s.get("at") is not None]
    t0, t_end = drill_window(drill, data_ts)
    e = html.escape
    params = drill.get("params") or {}
    missing = "".join(f"<li>{e(m)}</li>" for m in run.missing)
    how = " ".join(filter(None, [str(params.get("mode") or ""), "drill"] + (
        [f"on {params['backend']}"] if params.get("backend") else [])))
    title = f"Disaster-recovery drill — {how}" if how != "drill" else "Disaster-recovery drill"
    when = f"started {_param_value('started_at', params['started_at'])}" if params.get("started_at") else ""
    # The empty icon keeps the browser from asking the folder for a favicon.ico it does not have.
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title><link rel="icon" href="data:,">
<style>{CSS}{_DRILL_CSS}</style></head><body>
<h1>{e(title)}</h1><p>{e(when)}{' · ' if when and params.get('command') else ''}{e(str(params.get('command', '')))}</p>
{verdict_block(drill.get('verdict'))}
{f'<div class="missing" id="missing"><b>Not in this report:</b><ul>{missing}</ul></div>' if missing else ''}
<h2>Steps</h2>{steps_table(drill.get('steps') or [], t0)}
<h2>Timeline</h2>{_timeline(run, workdir, t0, t_end, slo_targets)}
<h2>SLOs</h2>{slos_table(drill.get('slos') or [])}{'' if drill.get('slos') else '<p>No SLO verdicts yet.</p>'}
<h2>Parameters</h2>{params_table(params)}
</body></html>"""
    path = workdir / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path
