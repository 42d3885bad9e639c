"""Helpers of the Locust users (loadtests/locustfile.py): the run's setup from the command-line options, requests
with idempotency keys and one retry on 503, and the monitors that report non-HTTP figures as custom events."""
from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import requests
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loadtests.capacity import DesignCapacity, load_capacity
from loadtests.profile import LoadProfile, check_against_capacity, load_profile, resolve
from standby.domain.tariff import Tariff, load_tariff

# --- the tokens file ----------------------------------------------------------------------------------------------


class _Entry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class DeclarantToken(_Entry):
    tax_code: str
    token: str


class OfficerToken(_Entry):
    officer_id: str
    office: str
    token: str


class TokensFile(_Entry):
    declarants: list[DeclarantToken] = Field(min_length=1)
    officers: list[OfficerToken] = Field(default_factory=list)
    offices: list[str] = Field(min_length=1)


def load_tokens(path: str | Path) -> TokensFile:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--tokens-file {path}: cannot read: {exc}") from None
    try:
        return TokensFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"--tokens-file {path}: {problems}") from None


# --- the run's setup ------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything the users share, loaded once by the `init` event from the command-line options."""

    profile: LoadProfile | None = None
    capacity: DesignCapacity | None = None
    tokens: TokensFile | None = None
    tariff: Tariff | None = None
    options: object = None
    known: deque = field(default_factory=lambda: deque(maxlen=20_000))  # (number, declarant token) for readers
    _declarant_seq: itertools.count = field(default_factory=itertools.count)
    _officer_seq: itertools.count = field(default_factory=itertools.count)

    def load(self, options) -> None:
        if not options.tokens_file:
            raise ValueError("--tokens-file is required: a JSON file of declarant and officer tokens")
        self.options = options
        self.profile = load_profile(resolve(options.loadtest_config))
        self.capacity = load_capacity(resolve(options.capacity_config))
        check_against_capacity(self.profile, self.capacity)
        self.tokens = load_tokens(options.tokens_file)
        self.tariff = load_tariff(self.profile.tariff_path)

    @property
    def standby_host(self) -> str:
        return (getattr(self.options, "standby_host", "") or "").rstrip("/")

    def next_declarant(self) -> DeclarantToken:
        return self.tokens.declarants[next(self._declarant_seq) % len(self.tokens.declarants)]

    def next_officer(self) -> OfficerToken | None:
        """Officers are handed out in turn; once every officer is taken, users share one (and may race)."""
        if not self.tokens.officers:
            return None
        return self.tokens.officers[next(self._officer_seq) % len(self.tokens.officers)]


# --- requests -------------------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: dict
    ms: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def call(client, method: str, path: str, token: str, name: str, body: dict | None = None,
         tolerated: tuple[str, ...] = ()) -> Reply:
    """One API call as a real client makes it: a bearer token; for a POST a fresh Idempotency-Key, and a 503 ("not
    now") retried once with the SAME key. The retried 503 is reported under "<name> [503 retried]" as a success (the
    client recovered); refusals whose error code is in `tolerated` are reported under "<name> [<code>]" as successes
    (expected races), everything else >= 400 as a failure."""
    headers = {"Authorization": f"Bearer {token}"}
    if method == "POST":
        headers["Idempotency-Key"] = uuid.uuid4().hex
    for attempt in (1, 2):
        with client.request(method, path, json=body, headers=headers, name=name, catch_response=True) as resp:
            try:
                payload = resp.json() if resp.content else {}
            except ValueError:
                payload = {}
            payload = payload if isinstance(payload, dict) else {"items": payload}
            status = resp.status_code or 0
            ms = resp.request_meta["response_time"]
            if status == 503 and attempt == 1 and method == "POST":
                resp.request_meta["name"] = f"{name} [503 retried]"
                resp.success()
                gevent.sleep(float(resp.headers.get("Retry-After", "1") or 1) if resp.headers else 1)
                continue
            code = (payload.get("error") or {}).get("code") if isinstance(payload.get("error"), dict) else None
            if status >= 400 and code in tolerated:
                resp.request_meta["name"] = f"{name} [{code}]"
                resp.success()
            elif status >= 400 or status == 0:
                resp.failure(f"{status} {code or ''}: {str(payload)[:200]}")
            return Reply(status, payload, ms)
    raise AssertionError("unreachable")


def fire(environment, request_type: str, name: str, ms: float, exception: Exception | None = None) -> None:
    environment.events.request.fire(request_type=request_type, name=name, response_time=ms, response_length=0,
                                    exception=exception, context={})


# --- monitors: non-HTTP figures as custom events ----------------------------------------------------------------------


def replication_lag_s(metrics_text: str) -> float | None:
    """The largest `replication_lag_seconds` sample (one per stream), or None if the metric is absent."""
    values = [s.value for family in text_string_to_metric_families(metrics_text)
              if family.name == "replication_lag_seconds" for s in family.samples
              if s.name == "replication_lag_seconds"]
    return max(values) if values else None


def watch_replication(environment, url: str, every_s: float) -> None:
    """Fires REPLICATION "lag" (ms) every `every_s` seconds; an unreachable endpoint or a missing metric is a failure."""
    while True:
        started = time.monotonic()
        try:
            reply = requests.get(url, timeout=2)
            reply.raise_for_status()
            lag = replication_lag_s(reply.text)
            if lag is None:
                raise ValueError(f"{url} has no replication_lag_seconds")
            fire(environment, "REPLICATION", "lag", lag * 1000)
        except Exception as exc:  # noqa: BLE001 - reported, never raised: the monitor keeps going
            fire(environment, "REPLICATION", "lag", 0, exc)
        gevent.sleep(max(0.0, every_s - (time.monotonic() - started)))


class FreezeWatch:
    """Follows /readyz's intake_state; on frozen -> open fires INTAKE "frozen" with how long it was frozen (ms).
    Resolution is the poll interval. An unreachable site is not a freeze and is not reported."""

    def __init__(self, environment, url: str, every_s: float):
        self.environment, self.url, self.every_s = environment, url, every_s
        self.frozen_since: float | None = None

    def observe(self, intake_state: str | None, now: float) -> float | None:
        if intake_state == "frozen" and self.frozen_since is None:
            self.frozen_since = now
        elif intake_state == "open" and self.frozen_since is not None:
            frozen_ms, self.frozen_since = (now - self.frozen_since) * 1000, None
            fire(self.environment, "INTAKE", "frozen", frozen_ms)
            return frozen_ms
        return None

    def run(self) -> None:
        while True:
            try:
                state = requests.get(self.url, timeout=2).json().get("intake_state")
                self.observe(state, time.monotonic())
            except (requests.RequestException, ValueError, AttributeError):
                pass  # the site may be down mid-failover: not a freeze, keep watching
            gevent.sleep(self.every_s)
