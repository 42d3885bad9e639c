"""Bearer tokens with roles. The tokens file holds SHA-256 hashes only; a token's text is shown once when issued
and is never logged."""
from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from standby.clearance.commands import Principal, Role


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
        if not path.exists():
            return cls([])
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        entries = []
        for i, item in enumerate(raw.get("tokens", [])):
            try:
                entries.append(TokenEntry(str(item["sha256"]), Role(item["role"]), str(item["subject"])))
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"{path}: tokens[{i}] is malformed ({exc}); expected sha256, role, subject") from None
        return cls(entries)


class ReloadingTokenRegistry:
    """A TokenRegistry that follows its file: a token issued while the site runs is accepted within a second.
    Contract: the file's modification time is checked at most once per `interval_s`; a file that fails to parse
    keeps the previous tokens (and the error is logged by the caller's next start, not here)."""

    def __init__(self, path: Path, interval_s: float = 1.0, clock=time.monotonic):
        self.path, self.interval_s, self.clock = path, interval_s, clock
        self._registry, self._mtime, self._checked = TokenRegistry([]), None, float("-inf")
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._checked < self.interval_s:
            return
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime:
            try:
                self._registry, self._mtime = TokenRegistry.load(self.path), mtime
            except (ValueError, yaml.YAMLError):
                pass

    def principal(self, token: str) -> Principal | None:
        self._refresh()
        return self._registry.principal(token)

    def __len__(self) -> int:
        return len(self._registry)


def issue_token(path: Path, role: Role, subject: str) -> str:
    """Create a token, append its hash to the tokens file (mode 0600) and return the token's text."""
    return issue_tokens(path, [(role, subject)])[0]


def issue_tokens(path: Path, wanted: list[tuple[Role, str]]) -> list[str]:
    """Create one token per (role, subject), append their hashes in one atomic write, return the texts in order."""
    tokens = [secrets.token_urlsafe(32) for _ in wanted]
    raw = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.exists() else {}
    raw.setdefault("tokens", []).extend({"sha256": token_digest(t), "role": role.value, "subject": subject}
                                        for t, (role, subject) in zip(tokens, wanted))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return tokens
