"""Where the drill's sites come from, and how it kills and brings back a primary: the two kinds of deployment.

- Embedded (the default): the drill starts everything itself (standbyctl/bench_switchover_deploy.py: sites,
  witness, front, replication, on SQLite or on PostgreSQL clusters it starts), kills the primary's every process
  with SIGKILL (serve, its Ray workers, the replicator out of it) and starts its serve again for the failback.
- Running sites (`--existing`): the sites, witness and front the settings file names, already running. The drill
  starts only Locust (and the runbooks, which start the replicators they need, as an operator's runs would). It never
  seeds: a primary with no enterprises is refused, naming `standbyctl seed`. It never kills what it did not start
  unless told to: the failover step runs `--kill-primary COMMAND` ({site} replaced by the primary's id), then waits
  for the killed site to answer again (its supervisor restarts it, or `--restart-site COMMAND` does); without
  --kill-primary the failover and failback steps are skipped, and the report says so. Declarant tokens are issued for
  the run, labelled drill-<time>, and revoked when it ends."""
from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from standbyctl.bench_failover import kill_site, start_site
from standbyctl.bench_switchover_deploy import Deployment, front_url, site_url


class SitesUnfit(RuntimeError):
    """The running sites cannot carry a drill; the message says what to do."""


class EmbeddedSites:
    """The sites the drill started: kill every process of one with SIGKILL, start its serve again."""

    can_kill = True

    def kill(self, dep: Deployment, site: str) -> tuple[float, str]:
        kill_at, killed = kill_site(dep, site)
        return kill_at, f"serve, {killed['workers']} Ray workers, {killed['replicators']} replicator(s)"

    def bring_back(self, dep: Deployment, settings, site: str, token: str) -> None:
        start_site(dep, settings, site, token)


class RunningSites:
    """Sites someone else runs: killed and restarted only by the operator's own commands."""

    def __init__(self, kill_command: str | None, restart_command: str | None, come_back_s: float = 300):
        self.kill_command, self.restart_command, self.come_back_s = kill_command, restart_command, come_back_s

    @property
    def can_kill(self) -> bool:
        return bool(self.kill_command)

    def kill(self, dep: Deployment, site: str) -> tuple[float, str]:
        kill_at = time.time()
        _run_operator_command(self.kill_command, site, dep.workdir / "kill-primary.log")
        return kill_at, f"`{self.kill_command.replace('{site}', site)}`"

    def bring_back(self, dep: Deployment, settings, site: str, token: str) -> None:
        if self.restart_command:
            _run_operator_command(self.restart_command, site, dep.workdir / "restart-site.log")
        dep.wait_http(f"site-{site.lower()}", f"{site_url(settings, site)}/v1/site", timeout_s=self.come_back_s,
                      token=token)


def _run_operator_command(command: str, site: str, log: Path) -> None:
    """The operator's command with {site} replaced (quoted); RuntimeError naming it when it exits non-zero."""
    line = command.replace("{site}", shlex.quote(site))
    with log.open("a") as out:
        rc = subprocess.run(line, shell=True, stdout=out, stderr=subprocess.STDOUT, timeout=120).returncode
    if rc != 0:
        raise RuntimeError(f"`{line}` exited {rc}; see {log}")


def check_running(settings, witness, engine_for, timeout_s: float = 5) -> tuple[str, str]:
    """(primary, standby) of running sites fit for a drill, else SitesUnfit saying what is wrong: two sites in the
    settings, the witness names one primary, both sites and the front answer, the primary has enterprises."""
    from sqlalchemy import func, select

    from standby.store.schema import enterprises

    if len(settings.sites) != 2:
        raise SitesUnfit(f"a drill needs exactly two sites in the settings; they name {sorted(settings.sites)}")
    primary = witness.state().primary_site
    if primary not in settings.sites:
        raise SitesUnfit(f"the witness names no primary among {sorted(settings.sites)} (it says {primary!r})")
    standby = next(s for s in settings.sites if s != primary)
    for name, url in ((f"site {primary}", f"{site_url(settings, primary)}/healthz"),
                      (f"site {standby}", f"{site_url(settings, standby)}/healthz"),
                      ("the front", f"{front_url(settings)}/readyz")):
        _answers(name, url, timeout_s)
    with engine_for(primary).connect() as conn:
        if not conn.execute(select(func.count()).select_from(enterprises)).scalar():
            raise SitesUnfit(f"site {primary} has no enterprises: the drill never seeds running sites; run "
                             f"`standbyctl seed --site {primary}` first if that is what you want")
    return primary, standby


def _answers(name: str, url: str, timeout_s: float) -> None:
    try:
        for attempt in Retrying(retry=retry_if_exception_type(httpx.HTTPError), wait=wait_fixed(0.5),
                                stop=stop_after_delay(timeout_s), reraise=True):
            with attempt:
                status = httpx.get(url, timeout=2).status_code
    except httpx.HTTPError as exc:
        raise SitesUnfit(f"{name} does not answer at {url} ({type(exc).__name__}): start it first") from None
    if status != 200:
        raise SitesUnfit(f"{name} answers {url} with {status}: it is not ready for a drill")
