"""Whether a running site accepts a token just written to its tokens file, in every one of its HTTP processes.

A site's HTTP process reloads a changed tokens file in the background when a request asks it for a token (at most
once a second), so until a process has been asked it still refuses the new tokens. With several processes, one that
accepts says nothing about the others: the token must be accepted on new connections, which the processes share
out, for longer than a reload takes."""
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
