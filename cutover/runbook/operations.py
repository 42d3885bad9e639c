"""Carrying out one operation of a step (action, command or HTTP call) once, within a timeout. No retries here:
the executor wraps these in tenacity according to the step's `retries`."""
from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx

from cutover.runbook.actions import ActionContext, ActionFailed, ActionRegistry

OUTPUT_TAIL = 2000  # characters of a command's output kept in the journal


class StepTimeout(Exception):
    """An attempt took longer than the step's timeout_s."""


def call_action(registry: ActionRegistry, name: str, args: dict, ctx: ActionContext, timeout_s: float) -> dict:
    """Validate the arguments, call the action in a worker thread and wait at most timeout_s for it. The thread is
    a daemon: an action that ignores ctx.deadline is abandoned, not killed (Python cannot kill a thread)."""
    action = registry.get(name)
    try:
        parsed = action.parse_args(args)
    except ValueError as exc:
        raise ActionFailed(str(exc)) from None
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = action.fn(ctx, parsed)
        except BaseException as exc:  # noqa: BLE001 - carried back to the executor's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"action-{name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise StepTimeout(f"action {name} took longer than {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    result = box.get("result")
    if result is None:
        return {}
    if not isinstance(result, dict):
        raise ActionFailed(f"action {name} returned {type(result).__name__}, not a dict")
    return result


def run_command(argv: list[Any], timeout_s: float, progress=lambda message: None) -> dict:
    """Run argv without a shell. A non-zero exit fails; stdout that is one JSON object becomes the result's keys
    (so a site's own scripts can hand values to later steps), beside exit_code and the output's tail."""
    argv = [str(a) for a in argv]
    progress("$ " + " ".join(argv))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise StepTimeout(f"command {argv[0]} took longer than {timeout_s:g} s") from None
    except OSError as exc:
        raise ActionFailed(f"cannot run {argv[0]}: {exc.strerror}") from None
    result: dict[str, Any] = {"exit_code": done.returncode, "stdout": done.stdout[-OUTPUT_TAIL:],
                              "stderr": done.stderr[-OUTPUT_TAIL:]}
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
        shown = " ".join(Path(a).name for a in argv[:2])
        raise ActionFailed(f"command {shown} exited with {done.returncode}: {last[0][:300]}")
    try:
        parsed = json.loads(done.stdout)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        result.update({k: v for k, v in parsed.items() if k not in result})
    return result


def call_http(method: str, url: str, headers: dict, body: Any, expect_status: list[int], timeout_s: float) -> dict:
    """One HTTP call; a status outside expect_status fails. The result carries the status and the JSON body."""
    try:
        response = httpx.request(method, url, headers=headers, json=body, timeout=timeout_s)
    except httpx.TimeoutException:
        raise StepTimeout(f"{method} {url} took longer than {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise ActionFailed(f"{method} {url}: {exc}") from None
    if response.status_code not in expect_status:
        raise ActionFailed(f"{method} {url} answered {response.status_code}, expected "
                           f"{' or '.join(map(str, expect_status))}")
    try:
        parsed = response.json()
    except ValueError:
        parsed = response.text[-OUTPUT_TAIL:]
    return {"status": response.status_code, "body": parsed}
