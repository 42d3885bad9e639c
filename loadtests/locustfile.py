"""Locust users that behave like the real population, at a rate derived from config/capacity.yaml.

    locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8401 --tokens-file tokens.json \
        --shape steady --multiplier 2 [--standby-host http://127.0.0.1:8402] \
        [--replication-metrics-url http://127.0.0.1:9464/metrics] [-t 10m] --csv reports/run --csv-full-history \
        [--processes 4 --latency-log reports/run]

Users: declarants (pre-declare -> maybe amend -> register -> pay -> poll), officers working their queues, and
read-only clients of the standby. Shapes: `steady` at --multiplier x design, `step` (the knee), `spike` (the first day
after cutover, compressed), or `none` (plain -u/-r). Config is read in the `init` event, never at import.
Stats rows are named by route template; a registration also fires a "DECISION <lane>" row (green p99 is the SLO);
REPLICATION "lag" and INTAKE "frozen" are custom events for the non-HTTP figures. Every process also writes
per-second histograms of the SLO measurements (loadtests/latency_log.py), so the knee's plateaus get exact p99s.
With --ledger-dir DIR every process also keeps a client-side ledger (see Ledger): every declaration number acknowledged
to it with what it sent, and its failed, 503-retried and slow requests, which a switchover bench checks afterwards."""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import gevent
from locust import FastHttpUser, LoadTestShape, events, task
from locust.runners import WorkerRunner
from locust.user.wait_time import constant_pacing

from loadtests import profile as lp
from loadtests.keepalive import use_poll_for_liveness
from loadtests.latency_log import LatencyLog, log_path
from loadtests.slo import DECISION, LAG
from loadtests.users_support import FreezeWatch, Setup, call, fire, watch_replication
from standby.domain.states import Kind
from standby.synthetic import make_declaration_payload, make_goods_lines

SETUP = Setup()
DECLARATION = "/v1/declarations/[number]"
LATENCY = LatencyLog([DECISION, LAG])  # exact per-plateau p99s for the knee (one file per Locust process)


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--tokens-file", default="", help="JSON: declarants, officers and offices with tokens")
    parser.add_argument("--shape", choices=("steady", "step", "spike", "none"), default="steady",
                        help="load shape; 'none' uses -u/-r/-t as plain Locust")
    parser.add_argument("--multiplier", type=float, default=1.0, help="x design peak, for --shape steady")
    parser.add_argument("--loadtest-config", default="config/loadtest.yaml", help="user mix, think times, shapes")
    parser.add_argument("--capacity-config", default="config/capacity.yaml", help="design capacity inputs")
    parser.add_argument("--standby-host", default="", help="base URL of the standby; StandbyReader skipped if empty")
    parser.add_argument("--replication-metrics-url", default="",
                        help="replicator's /metrics; replication_lag_seconds reported as REPLICATION lag")
    # Locust clears --csv in its --processes workers, so the latency log has its own option (default: the --csv
    # prefix of a single process).
    parser.add_argument("--latency-log", default="",
                        help="write PREFIX_latency.<pid>.csv: per-second green-decision and lag histograms")
    parser.add_argument("--ledger-dir", default="",
                        help="append every acknowledged declaration number and what was sent for it to "
                             "DIR/ledger.<pid>.jsonl, failed/retried/slow requests to DIR/events.<pid>.jsonl")


@events.init.add_listener
def _init(environment, **_kw) -> None:
    use_poll_for_liveness()  # every process: past ~1,000 users the library's own check reconnects every request
    if environment.parsed_options is None:  # used as a library: the caller sets SETUP up
        return
    SETUP.load(environment.parsed_options)
    mix = SETUP.profile.mix
    DeclarantUser.weight, OfficerUser.weight = mix.declarant, mix.officer
    StandbyReader.weight = mix.standby_reader if SETUP.standby_host else 0


_monitors: list[gevent.Greenlet] = []


@events.test_start.add_listener
def _start_monitors(environment, **_kw) -> None:
    if isinstance(environment.runner, WorkerRunner) or SETUP.profile is None or _monitors:
        return
    every = SETUP.profile.monitor
    if SETUP.options.replication_metrics_url:
        _monitors.append(gevent.spawn(watch_replication, environment, SETUP.options.replication_metrics_url,
                                      every.replication_poll_s))
    if environment.host:
        watch = FreezeWatch(environment, environment.host.rstrip("/") + "/readyz", every.readyz_poll_s)
        _monitors.append(gevent.spawn(watch.run))


@events.test_stop.add_listener
def _stop_monitors(**_kw) -> None:
    gevent.killall(_monitors)
    _monitors.clear()


@events.request.add_listener
def _count_latency(request_type, name, response_time, exception=None, response=None, **_kw) -> None:
    if response_time is not None:  # failures count too, as in Locust's own percentiles
        LATENCY.record(request_type, name, response_time, time.time())
    if request_type not in ("REPLICATION", "INTAKE"):
        LEDGER.client_event(name, response_time, exception, getattr(response, "error", None))


@events.quitting.add_listener  # fired in every process, workers included, after the last request
def _write_latency_log(environment, **_kw) -> None:
    options = environment.parsed_options
    prefix = (options.latency_log or getattr(options, "csv_prefix", None)) if options else None
    if prefix and LATENCY.counts:
        LATENCY.write(log_path(prefix))


class Ledger:
    """Opt-in (--ledger-dir) client-side ledger, one file per process, every line written and flushed at once so a
    reader sees everything answered before it read.

    ledger.<pid>.jsonl: one line per number acknowledged (a pre-declaration's 201; an amendment's 2xx, with its new
    number): {"number", "base", "supersedes" (the amended number, else null), "enterprise_tax_code", "office_code",
    "kind", "ms" (the answer's latency), "at" (Unix time of the answer)}. events.<pid>.jsonl: one line per failed
    request ("failure"), per 503 the client retried ("retried") and per answer slower than SLOW_MS ("slow"):
    {"kind", "name", "error", "ms", "at"}."""

    SLOW_MS = 200

    def __init__(self) -> None:
        self._files: dict[str, object] = {}

    def _write(self, stem: str, line: dict) -> None:
        folder = getattr(SETUP.options, "ledger_dir", "") if SETUP.options else ""
        if not folder:
            return
        if stem not in self._files:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self._files[stem] = open(Path(folder) / f"{stem}.{os.getpid()}.jsonl", "a", encoding="utf-8")
        self._files[stem].write(json.dumps(line) + "\n")
        self._files[stem].flush()

    def acknowledged(self, number: str, body: dict, office: str, ms: float, supersedes: str | None = None) -> None:
        self._write("ledger", {"number": number, "base": number[:-1], "supersedes": supersedes,
                               "enterprise_tax_code": body["enterprise_tax_code"], "office_code": office,
                               "kind": body["kind"], "ms": ms, "at": time.time()})

    def client_event(self, name: str, ms: float | None, exception, cause=None) -> None:
        """`cause`: the transport error behind a status-0 answer (connection reset, timeout), if any."""
        kind = ("failure" if exception is not None else "retried" if name.endswith("[503 retried]")
                else "slow" if (ms or 0) > self.SLOW_MS else None)
        if kind:
            error = f"{exception}{f' ({cause!r})' if cause is not None else ''}"[:300] if exception else None
            self._write("events", {"kind": kind, "name": name, "error": error, "ms": ms, "at": time.time()})


LEDGER = Ledger()


class _Paced(FastHttpUser):
    abstract = True

    def wait_time(self) -> float:
        return self._pace(self)

    def think(self, think) -> None:
        gevent.sleep(self.rng.uniform(think.min, think.max))


class DeclarantUser(_Paced):
    """One enterprise's clearance system: a declaration's whole life per iteration, one every `cycle_s`."""

    def on_start(self) -> None:
        me = SETUP.next_declarant()
        self.tax_code, self.token, self.rng = me.tax_code, me.token, random.Random()
        self.behaviour = SETUP.profile.declarant
        self._pace = constant_pacing(self.behaviour.cycle_s)
        gevent.sleep(self.rng.uniform(0, self.behaviour.cycle_s))  # arrivals spread over a cycle, not in waves

    @task
    def declaration_life(self) -> None:
        b, rng = self.behaviour, self.rng
        kind = Kind.EXPORT if rng.random() < b.export_share else Kind.IMPORT
        office = rng.choice(SETUP.tokens.offices)
        body = make_declaration_payload(rng, kind, self.tax_code, office, SETUP.tariff)
        made = call(self.client, "POST", "/v1/declarations", self.token, "/v1/declarations", body)
        if not made.ok:
            return
        number = made.body["number"]
        if made.status == 201:
            LEDGER.acknowledged(number, body, office, made.ms)
        self.think(b.think_s)
        if rng.random() < b.amend_share:
            amended = call(self.client, "POST", f"/v1/declarations/{number}/amendments", self.token,
                           f"{DECLARATION}/amendments", {"goods": make_goods_lines(rng, kind, SETUP.tariff)})
            if not amended.ok:
                return
            LEDGER.acknowledged(amended.body["number"], body, office, amended.ms, supersedes=number)  # 2xx
            number = amended.body["number"]
            self.think(b.think_s)
        reg = call(self.client, "POST", f"/v1/declarations/{number}/registration", self.token,
                   f"{DECLARATION}/registration", tolerated=("enterprise_blocked",))
        if reg.ok:
            fire(self.environment, "DECISION", reg.body["lane"], reg.ms)
        elif reg.status == 422:
            fire(self.environment, "DECISION", "refused", reg.ms)
        if not reg.ok:
            return
        SETUP.known.append((number, self.token))
        state = reg.body
        if b.pay_green and state["lane"] == "green":
            state = self.pay(number, state)
        for _ in range(b.polls_per_declaration):
            self.think(b.think_s)
            polled = call(self.client, "GET", f"/v1/declarations/{number}", self.token, DECLARATION)
            if polled.ok:
                state = polled.body
                if b.pay_approved and state["lane"] != "green":
                    state = self.pay(number, state)

    def pay(self, number: str, state: dict) -> dict:
        outstanding = state["total_vnd"] - state["paid_vnd"]
        if state["state"] != "awaiting_payment" or outstanding <= 0:
            return state
        paid = call(self.client, "POST", f"/v1/declarations/{number}/payments", self.token,
                    f"{DECLARATION}/payments", {"amount_vnd": outstanding})
        return paid.body if paid.ok else state


class OfficerUser(_Paced):
    """An officer working their yellow/red-lane queue: fetch it every `queue_poll_s`, check, decide."""

    def on_start(self) -> None:
        me = SETUP.next_officer()
        if me is None:
            self.stop()
            return
        self.officer_id, self.token, self.rng = me.officer_id, me.token, random.Random()
        self.behaviour = SETUP.profile.officer
        self._pace = constant_pacing(self.behaviour.queue_poll_s)

    @task
    def work_queue(self) -> None:
        b = self.behaviour
        queue = call(self.client, "GET", "/v1/officers/me/queue", self.token, "/v1/officers/me/queue")
        for item in queue.body.get("items", [])[: b.max_decisions_per_poll] if queue.ok else []:
            self.think(b.think_s)
            decision = "approve" if self.rng.random() < b.approve_share else "reject"
            # Two users sharing an officer (more users than officers) may race for one item: that is not an error.
            call(self.client, "POST", f"/v1/declarations/{item['number']}/decision", self.token,
                 f"{DECLARATION}/decision", {"decision": decision, "note": f"{decision}d by load test"},
                 tolerated=("illegal_transition", "number_superseded"))


class StandbyReader(_Paced):
    """A read-only client of the standby (--standby-host): looks up declarations the declarants made. A number not
    yet replicated is reported as "[not_found]", not as a failure."""

    def on_start(self) -> None:
        if not SETUP.standby_host:
            self.stop()
            return
        self.rng = random.Random()
        think = SETUP.profile.standby_reader.think_s
        self._pace = lambda _self: self.rng.uniform(think.min, think.max)

    @task
    def read_known(self) -> None:
        if not SETUP.known:
            return
        number, token = self.rng.choice(SETUP.known)
        call(self.client, "GET", f"{SETUP.standby_host}/v1/declarations/{number}", token,
             f"{DECLARATION} (standby)", tolerated=("not_found",))


class ConfiguredShape(LoadTestShape):
    """--shape steady|step|spike from config (schedules in loadtests/profile.py); -t still ends the run early."""

    use_common_options = True

    def tick(self):
        options = SETUP.options
        run_time, elapsed = getattr(options, "run_time", None), self.get_run_time()
        if run_time and elapsed >= run_time:
            return None
        classes = [DeclarantUser, OfficerUser] + ([StandbyReader] if SETUP.standby_host else [])
        if options.shape == "none":
            return options.num_users or 1, options.spawn_rate or 1, classes
        if getattr(self, "_stages", None) is None:
            self._stages = self.schedule(options.shape, options.multiplier)
        stage = lp.stage_at(self._stages, elapsed)
        return None if stage is None else (stage.users, stage.spawn_rate, classes)

    @staticmethod
    def schedule(shape: str, multiplier: float) -> list[lp.Stage]:
        readers = bool(SETUP.standby_host)
        if shape == "steady":
            return lp.steady_schedule(SETUP.profile, SETUP.capacity, multiplier, with_readers=readers)
        if shape == "step":
            return lp.step_schedule(SETUP.profile, SETUP.capacity, with_readers=readers)
        return lp.spike_schedule(SETUP.profile, SETUP.capacity, with_readers=readers)
