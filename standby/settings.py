"""One configuration schema, loaded once from YAML and passed in. Nothing here reads the environment."""
from __future__ import annotations

from pathlib import Path

import yaml
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


AUTO_HTTP_PROCESSES_MAX = 4
AUTO_WRITERS_POSTGRES = 2


def writers_for(count: int | Literal["auto"], database_url: str) -> int:
    """How many workers write into the database at `database_url` at once (ClearanceWorkers into a site's, apply
    workers into a standby's): `count`, or for auto one into SQLite and AUTO_WRITERS_POSTGRES into PostgreSQL. A
    SQLite file has one write lock, held by a transaction from its first statement to its commit, so a second
    writer adds no parallel writing, only a queue for that lock (measured at 12x design on 2 cores: green p99 55 ms
    with one ClearanceWorker, 96-100 ms with two; apply workers' CPU 10.5-11% of a core with one, 18-19% with two,
    at 16x). PostgreSQL lets them write at once."""
    if count != "auto":
        return count
    return 1 if is_sqlite_url(database_url) else AUTO_WRITERS_POSTGRES


class HttpSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8401, ge=1, le=65535)
    processes: Annotated[int, Field(ge=1, le=32)] | Literal["auto"] = Field(
        "auto", description="HTTP processes serving the site on its one port, sharing its workers; auto: one per "
                            f"CPU of the machine, at most {AUTO_HTTP_PROCESSES_MAX}")

    def process_count(self, cpus: int | None) -> int:
        """How many HTTP processes serve the site on a machine of `cpus` CPUs (None: unknown, one)."""
        if self.processes != "auto":
            return self.processes
        return max(1, min(AUTO_HTTP_PROCESSES_MAX, cpus or 1))


class SiteSettings(_Strict):
    site_digit: int = Field(ge=1, le=9, description="first digit of every declaration number this site issues")
    database_url: str
    http: HttpSettings = HttpSettings()


class RaySettings(_Strict):
    address: str | None = Field(None, description="join this Ray cluster; None starts a local Ray")
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto", description="ClearanceWorker actors of a site, one per partition of its customs offices; auto: one "
                            f"on SQLite, {AUTO_WRITERS_POSTGRES} on PostgreSQL (see writers_for)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray; None lets Ray decide")


class IntakeSettings(_Strict):
    batch_max_items: int = Field(500, ge=1, le=5000)
    batch_max_wait_ms: float = Field(2.0, ge=0, le=1000)
    number_block_size: int = Field(1000, ge=1, le=1_000_000)
    call_timeout_s: float = Field(30.0, gt=0, description="a worker call slower than this fails with a clear error")
    call_attempts: int = Field(3, ge=1, le=10, description="tries of a batch whose worker died (idempotent)")


class LimitSettings(_Strict):
    max_body_bytes: int = Field(256 * 1024, ge=1024)


class ReferenceSettings(_Strict):
    org_dir: Path = Path("config/org")
    tariffs: Path = Path("config/tariffs.yaml")
    risk_rules: Path = Path("config/risk_rules.yaml")
    capacity: Path = Path("config/capacity.yaml")


class AuthSettings(_Strict):
    tokens_file: Path = Field(Path("var/tokens.yaml"), description="hashed bearer tokens; never in the repo")


class ReplicationSettings(_Strict):
    """Replicators that a runbook starts (the reverse stream of a switchover)."""

    partitions: Annotated[int, Field(ge=1, le=32)] | Literal["auto"] = Field(
        "auto", description="apply workers of a stream a runbook sets up; auto: one into a SQLite standby, "
                            f"{AUTO_WRITERS_POSTGRES} into PostgreSQL (see writers_for)")
    metrics_port: int = Field(9464, ge=0, le=65535,
                              description="where that replicator serves /metrics (Prometheus scrapes 9464); 0: none")
    idle_sleep_ms: float = Field(20.0, ge=0, le=10_000,
                                 description="how long a caught-up replicator (standbyctl replicate; caught up: "
                                             "its last read returned less than a window) waits before it "
                                             "reads the primary again: the floor of the standby's delay, and so of "
                                             "every acknowledgement in synchronous mode (on average half of it)")


class FrontSettings(_Strict):
    """The front: one address for clients that forwards to the primary the witness names and holds writes while
    there is none (standbyctl front)."""

    host: str = "127.0.0.1"
    port: int = Field(8400, ge=1, le=65535)
    hold_max_s: float = Field(10.0, gt=0, le=600,
                              description="a write held longer than this gets 503 front_held_too_long")
    hold_max_requests: int = Field(5000, ge=1, le=1_000_000,
                                   description="writes held at once; more get 503 front_hold_full")
    witness_poll_ms: float = Field(50.0, ge=5, le=10_000,
                                   description="how often the front asks the witness who is primary")
    forward_timeout_s: float = Field(30.0, gt=0, le=600,
                                     description="one forwarded request slower than this gets 504")


class LeaseSettings(_Strict):
    """The primary's lease in the witness and its self-fencing (Patroni's loop_wait/retry_timeout/ttl).

    The primary renews every `renew_interval_s`; a renewal slower than `retry_timeout_s` counts as failed. After a
    renewal that started at t, the witness holds the lease until t + ttl_s and the site accepts writes only until
    t + ttl_s - fence_margin_s (its self-fencing deadline), so it stops writing before anyone may take the lease.
    The rule checked at load, `renew_interval_s + 2 * retry_timeout_s <= ttl_s - fence_margin_s`, means a healthy
    primary always renews (with one retry) before its own deadline; the margin must cover clock skew between the
    site and the witness's readers and the time one batch takes to commit."""

    ttl_s: float = Field(3.0, gt=0, le=600, description="the lease the witness grants; a standby may take over "
                                                        "only after it expired")
    renew_interval_s: float = Field(0.5, gt=0, description="how often the primary renews its lease")
    retry_timeout_s: float = Field(0.75, gt=0, description="a renewal slower than this counts as failed")
    fence_margin_s: float = Field(0.5, gt=0, description="the primary stops accepting writes this long before its "
                                                         "lease expires")

    @model_validator(mode="after")
    def _fences_before_takeover(self) -> "LeaseSettings":
        budget = self.ttl_s - self.fence_margin_s
        needed = self.renew_interval_s + 2 * self.retry_timeout_s
        if needed > budget:
            raise ValueError(
                f"renew_interval_s + 2 * retry_timeout_s ({self.renew_interval_s:g} + 2 * {self.retry_timeout_s:g} "
                f"= {needed:g}) must not exceed ttl_s - fence_margin_s ({self.ttl_s:g} - {self.fence_margin_s:g} = "
                f"{budget:g}): a healthy primary would fence itself between two renewals")
        return self

    @property
    def self_fence_after_s(self) -> float:
        """Seconds after a renewal started that the primary stops accepting writes."""
        return self.ttl_s - self.fence_margin_s


class SyncSettings(_Strict):
    """Synchronous mode, per site pair: a primary acknowledges a write only once its standby has applied it
    (standby.api.sync). While a site of a pair is primary, every write it answers waits until its partner has applied
    the primary's committed position read after the write; waiting writes share that read (one per round, at most
    one per poll_ms). The standby applies through its replicator, so replication.idle_sleep_ms is the latency floor
    of every acknowledgement: set it to 5 for a sync pair (BENCHMARKS.md "Synchronous mode": at 3x design the
    green-lane decision's p99 was 140 ms with 20, 98 ms with 5).
    Writes wait whenever the partner's stream is not running: after a switchover until the reverse replicator (started
    after resume) has caught up, and after a failover until the old primary is back as a standby. Under `degrade` they
    are acknowledged after standby_timeout_s and the primary runs async until the partner has caught up; under `block`
    the primary refuses every write meanwhile: choose `degrade` where availability comes first."""

    pairs: list[tuple[str, str]] = Field(default_factory=list, description="site pairs in synchronous mode, "
                                                                           "either way round (e.g. [[A, B]])")
    on_standby_lost: Literal["block", "degrade"] = Field(
        "degrade", description="when the standby has not applied a write within standby_timeout_s: block (answer "
                               "503 sync_standby_unavailable, the write stays committed and a retry with the same "
                               "Idempotency-Key gets its answer once applied) or degrade to async (acknowledge, "
                               "say so in the metric and the log, and return to sync once the standby catches up)")
    standby_timeout_s: float = Field(2.0, gt=0, le=600, description="how long an acknowledgement waits for the "
                                                                     "standby before on_standby_lost applies")
    poll_ms: float = Field(2.0, gt=0, le=1000, description="how often the primary looks at the standby's applied "
                                                          "position while writes wait, and the least time between "
                                                          "two reads of its own committed position")

    def standby_of(self, site_id: str) -> str | None:
        """The synchronous partner of `site_id`, or None when it is in no pair."""
        for a, b in self.pairs:
            if site_id in (a, b):
                return b if site_id == a else a
        return None


class WatchSettings(_Strict):
    """`standbyctl watch`: one per site; watches the primary and, in automatic mode, runs the failover runbook."""

    interval_s: float = Field(0.5, gt=0, le=60, description="how often the primary's health is checked")
    health_timeout_s: float = Field(0.5, gt=0, le=60, description="a health check slower than this failed")
    failures_before_failover: int = Field(3, ge=1, le=100, description="consecutive failed checks, with the lease "
                                                                       "expired, before an automatic failover")
    flap_guard_s: float = Field(600.0, ge=0, description="no second automatic failover within this many seconds "
                                                         "of the last one")
    refused_retry_s: float = Field(30.0, ge=0, description="after an automatic failover its runbook refused "
                                                           "(preconditions failed, nothing changed), the next "
                                                           "attempt may come this soon instead of flap_guard_s")


class Settings(_Strict):
    """Everything a site process needs. Relative paths are resolved against `root`."""

    root: Path = Path(".")
    data_dir: Path = Path("var")
    sites: dict[str, SiteSettings]
    witness_url: str = "sqlite:///var/witness.db"
    ray: RaySettings = RaySettings()
    intake: IntakeSettings = IntakeSettings()
    limits: LimitSettings = LimitSettings()
    reference: ReferenceSettings = ReferenceSettings()
    auth: AuthSettings = AuthSettings()
    front: FrontSettings = FrontSettings()
    replication: ReplicationSettings = ReplicationSettings()
    lease: LeaseSettings = LeaseSettings()
    sync: SyncSettings = SyncSettings()
    watch: WatchSettings = WatchSettings()

    @field_validator("sites")
    @classmethod
    def _distinct_digits(cls, sites: dict[str, SiteSettings]) -> dict[str, SiteSettings]:
        if not sites:
            raise ValueError("at least one site is required")
        digits = [s.site_digit for s in sites.values()]
        if len(set(digits)) != len(digits):
            raise ValueError("every site needs its own site_digit, or two sites could issue the same number")
        return sites

    @model_validator(mode="after")
    def _sync_pairs_name_sites(self) -> "Settings":
        seen: set[str] = set()
        for a, b in self.sync.pairs:
            for site in (a, b):
                if site not in self.sites:
                    raise ValueError(f"sync.pairs names site {site!r}, which is not configured")
                if site in seen:
                    raise ValueError(f"sync.pairs names site {site!r} twice; a site has one synchronous partner")
                seen.add(site)
            if a == b:
                raise ValueError(f"sync.pairs pairs site {a!r} with itself")
        return self

    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else (self.root / p).resolve()

    def site(self, site_id: str) -> SiteSettings:
        try:
            return self.sites[site_id]
        except KeyError:
            raise ConfigError(f"unknown site {site_id!r}; configured sites: {', '.join(sorted(self.sites))}") from None

    def database_url(self, site_id: str) -> str:
        return resolve_sqlite_url(self.site(site_id).database_url, self.root)

    def clearance_workers(self, site_id: str) -> int:
        """The number of ClearanceWorkers (partitions) of site `site_id`: ray.workers, or what auto picks for its
        database."""
        return writers_for(self.ray.workers, self.database_url(site_id))


class ConfigError(Exception):
    """The configuration is unusable; the message names the file and the setting."""


SQLITE_PREFIX = "sqlite:///"


def is_sqlite_url(database_url: str) -> bool:
    """True for a SQLite database (a file on this machine, or in memory)."""
    return database_url.startswith("sqlite")


def sqlite_file(database_url: str) -> Path | None:
    """The file a sqlite:/// URL names (its query, if any, left off), or None for any other URL."""
    if not database_url.startswith(SQLITE_PREFIX):
        return None
    return Path(database_url[len(SQLITE_PREFIX):].split("?", 1)[0])


def resolve_sqlite_url(url: str, root: Path) -> str:
    """Make a relative SQLite path absolute against root, so every process opens the same file."""
    if url.startswith(SQLITE_PREFIX) and not url.startswith(SQLITE_PREFIX + "/") and ":memory:" not in url:
        return SQLITE_PREFIX + str((root / url[len(SQLITE_PREFIX):]).resolve())
    return url


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` laid over it section by section: a mapping merges into the file's mapping of the same
    key (so `--ray-address` sets ray.address and keeps the file's ray.workers), any other value replaces. Neither
    argument is changed."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_settings(path: Path, overrides: dict | None = None) -> Settings:
    """Load and validate a settings file, with command-line `overrides` merged into it (see `merged`). `root`
    defaults to the folder above `config/`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"settings file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw.setdefault("root", str(path.resolve().parent.parent if path.resolve().parent.name == "config" else path.resolve().parent))
    raw = merged(raw, overrides or {})
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None
