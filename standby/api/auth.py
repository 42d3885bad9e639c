"""Bearer tokens with roles. The tokens file holds SHA-256 hashes only; a token's text is shown once when issued
and is never logged."""
from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from standby.clearance.commands import Principal, Role


# libyaml's loader parses a file of thousands of tokens ~6x faster than the pure-Python one (1.3 s -> 0.2 s for 8,800).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def read_tokens_file(path: Path) -> dict:
    """The tokens file's mapping ({"tokens": [...]}), or {} when there is no file yet."""
    if not path.exists():
        return {}
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER) or {}


def _write_tokens_file(path: Path, raw: dict) -> None:
    """Replace the tokens file in one atomic rename, mode 0600, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.dump(raw, Dumper=_DUMPER, sort_keys=False), encoding="utf-8")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


@dataclass(frozen=True)
class TokenEntry:
    sha256: str
    role: Role
    subject: str  # declarant: enterprise tax code; officer: officer id; operator: operator name


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenRegistry:
    """Maps a presented token to a Principal, or None. Contract: only hashes are held in memory or on disk."""

    def __init__(self, entries: list[TokenEntry]):
        self._by_hash = {e.sha256: e for e in entries}

    def principal(self, token: str) -> Principal | None:
        entry = self._by_hash.get(token_digest(token))
        return Principal(entry.role, entry.subject) if entry else None

    def __len__(self) -> int:
        return len(self._by_hash)

    @classmethod
    def load(cls, path: Path) -> "TokenRegistry":
        raw = read_tokens_file(path)
        entries = []
        for i, item in enumerate(raw.get("tokens", [])):
            try:
                entries.append(TokenEntry(str(item["sha256"]), Role(item["role"]), str(item["subject"])))
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"{path}: tokens[{i}] is malformed ({exc}); expected sha256, role, subject") from None
        return cls(entries)


def _in_background(load: Callable[[], None]) -> None:
    threading.Thread(target=load, name="tokens-reload", daemon=True).start()


class ReloadingTokenRegistry:
    """A TokenRegistry that follows its file: a token issued while the site runs is accepted within about a second.

    Contract: the file's modification time is checked at most once per `interval_s`, by a lookup and, between
    `watch()` and `stop_watching()`, by a thread of its own every `interval_s`, so a process nobody asks still picks
    the file up (one of several HTTP processes of a site may not be asked for a while: standbyctl.token_reload counts
    on every process having checked within `interval_s`). A changed file is parsed by `spawn` (default: a background
    thread), never on the caller's thread, because the caller is the event loop that carries intake and a file of
    thousands of tokens takes a noticeable time to parse. Until the parse finishes the previous tokens answer. A
    file that fails to parse keeps the previous tokens."""

    def __init__(self, path: Path, interval_s: float = 1.0, clock=time.monotonic,
                 spawn: Callable[[Callable[[], None]], None] = _in_background):
        self.path, self.interval_s, self.clock, self.spawn = path, interval_s, clock, spawn
        self._registry, self._mtime, self._checked = TokenRegistry([]), None, float("-inf")
        self._loading = threading.Lock()
        self._watching: threading.Event | None = None
        self._load(self._stat())  # the first load is synchronous: a site starts with its tokens

    def watch(self) -> None:
        """Check the file every `interval_s` from a daemon thread until `stop_watching` (once; again is a no-op)."""
        if self._watching is not None:
            return
        stop = self._watching = threading.Event()

        def run() -> None:
            while not stop.wait(self.interval_s):
                self._refresh()
        threading.Thread(target=run, name=f"tokens-watch-{id(self):x}", daemon=True).start()

    def stop_watching(self) -> None:
        if self._watching is not None:
            self._watching.set()
            self._watching = None

    def _stat(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _load(self, mtime: int | None) -> None:
        try:
            self._registry = TokenRegistry.load(self.path)
        except (ValueError, yaml.YAMLError):
            pass
        self._mtime = mtime  # a broken file is not re-parsed until it changes again

    def _load_and_release(self, mtime: int | None) -> None:
        try:
            self._load(mtime)
        finally:
            self._loading.release()

    def _refresh(self) -> None:
        now = self.clock()
        if now - self._checked < self.interval_s:
            return
        self._checked = now
        mtime = self._stat()
        if mtime != self._mtime and self._loading.acquire(blocking=False):
            try:
                self.spawn(lambda: self._load_and_release(mtime))
            except BaseException:
                self._loading.release()
                raise

    def principal(self, token: str) -> Principal | None:
        self._refresh()
        return self._registry.principal(token)

    def __len__(self) -> int:
        return len(self._registry)


def issue_token(path: Path, role: Role, subject: str) -> str:
    """Create a token, append its hash to the tokens file (mode 0600) and return the token's text."""
    return issue_tokens(path, [(role, subject)])[0]


def issue_tokens(path: Path, wanted: list[tuple[Role, str]], label: str | None = None) -> list[str]:
    """Create one token per (role, subject), append their hashes in one atomic write, return the texts in order.
    `label` marks the batch so `revoke_tokens` can remove it as a whole (e.g. the tokens of one load-test run)."""
    tokens = [secrets.token_urlsafe(32) for _ in wanted]
    raw = read_tokens_file(path)
    raw.setdefault("tokens", []).extend(
        {"sha256": token_digest(t), "role": role.value, "subject": subject, **({"label": label} if label else {})}
        for t, (role, subject) in zip(tokens, wanted))
    _write_tokens_file(path, raw)
    return tokens


def revoke_tokens(path: Path, label: str) -> int:
    """Remove every token issued with `label` in one atomic write; return how many. A running site stops accepting
    them within about a second."""
    raw = read_tokens_file(path)
    kept = [e for e in raw.get("tokens", []) if e.get("label") != label]
    removed = len(raw.get("tokens", [])) - len(kept)
    if removed:
        _write_tokens_file(path, {**raw, "tokens": kept})
    return removed
