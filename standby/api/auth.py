"""Bearer tokens with roles. The tokens file holds SHA-256 hashes only; a token's text is shown once when issued
and is never logged."""
from __future__ import annotations

import hashlib
import os
import secrets
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


def issue_token(path: Path, role: Role, subject: str) -> str:
    """Create a token, append its hash to the tokens file (mode 0600) and return the token's text."""
    token = secrets.token_urlsafe(32)
    raw = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.exists() else {}
    raw.setdefault("tokens", []).append({"sha256": token_digest(token), "role": role.value, "subject": subject})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return token
