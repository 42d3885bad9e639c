"""Whether a running site accepts a token just written to its tokens file, in every one of its HTTP processes.

Each HTTP process of a site checks its tokens file once a second, asked or not, and parses a changed file in the
background (standby.api.auth.ReloadingTokenRegistry). With several processes, one that accepts says nothing about
the others, and the shared socket may hand every probe to the same process: the token must be accepted for longer
than a check interval (STREAK_S > 1 s), by which time every process has checked the file and, for any file a site
parses in under half a second, loaded it. (Before the processes checked by themselves, one never asked during the
streak kept refusing: a suite run saw 1 of 30 requests refused right after this said yes.)"""
from __future__ import annotations

import time

import httpx
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

STREAK_S, STREAK_PROBES = 1.5, 12


def wait_until_accepted(url: str, token: str, timeout_s: float = 30.0, *, clock=time.monotonic,
                        sleep=time.sleep) -> bool:
    """True once the site at `url` has answered `token` with 200 on /v1/site STREAK_PROBES times in a row over at
    least STREAK_S seconds, each on a new connection; False if `timeout_s` passed first."""
    streak: list[float] = []  # when each probe of the current run of acceptances answered

    def accepted_long_enough() -> bool:
        try:
            accepted = httpx.get(f"{url}/v1/site", headers={"Authorization": f"Bearer {token}"},
                                 timeout=3).status_code == 200
        except httpx.HTTPError:
            accepted = False
        if not accepted:
            streak.clear()
            return False
        streak.append(clock())
        return len(streak) >= STREAK_PROBES and streak[-1] - streak[0] >= STREAK_S

    try:
        Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(0.1), retry=retry_if_result(lambda ok: not ok),
                 sleep=sleep)(accepted_long_enough)
    except RetryError:
        return False
    return True
