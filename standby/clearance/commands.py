"""What a worker is asked to do, and what it answers: plain data, and its wire form between processes."""
from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from standby.domain.errors import Refusal
from standby.wire import Wire


class Op(str, Enum):
    PRE_DECLARE = "pre_declare"  # IDA / EDA
    REGISTER = "register"  # IDC / EDC
    AMEND = "amend"  # IDE / EDE
    PAY = "pay"
    DECIDE = "decide"  # officer's document check / inspection result


class Role(str, Enum):
    DECLARANT = "declarant"
    OFFICER = "officer"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    """Who is asking: a declarant acts for one enterprise (subject = tax code), an officer is one officer id."""

    role: Role
    subject: str

    @property
    def key(self) -> str:
        return f"{self.role.value}:{self.subject}"


@dataclass(frozen=True)
class Command:
    op: Op
    principal: Principal
    idempotency_key: str
    payload: dict
    office_code: str  # the partition key
    request_hash: str = ""

    def __post_init__(self) -> None:
        if not self.request_hash:
            object.__setattr__(self, "request_hash", request_fingerprint(self.op, self.payload))


def request_fingerprint(op: Op, payload: dict) -> str:
    """Same op and body → same fingerprint; a key reused with a different body is refused."""
    canonical = json.dumps({"op": op.value, "payload": payload}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Outcome:
    """The answer to one command: an HTTP-like status and a JSON-ready body.

    `replayed` is true when the answer is the stored first answer to the same idempotency key."""

    status: int
    body: dict
    replayed: bool = False
    lane: str | None = None

    @property
    def ok(self) -> bool:
        return self.status < 400


def refused(status: int, code: str, message: str, field_name: str | None = None) -> Outcome:
    return Outcome(status, Refusal(code, message, field_name, status).envelope())


def partition_for(office_code: str, partitions: int) -> int:
    """Which worker owns an office: stable across processes and restarts (not Python's salted hash)."""
    return zlib.crc32(office_code.encode()) % partitions


# A batch crosses to its worker, and its answers come back, in standby.wire's form (not pickled dataclasses).
_COMMANDS = Wire(list[Command])
_OUTCOMES = Wire(list[Outcome])


def encode_commands(commands: Sequence[Command]) -> bytes:
    return _COMMANDS.encode(commands)


def decode_commands(blob: bytes) -> list[Command]:
    """The commands of `encode_commands`, equal to those encoded (their request_hash kept, not recomputed)."""
    return _COMMANDS.decode(blob)


def encode_outcomes(outcomes: Sequence[Outcome]) -> bytes:
    return _OUTCOMES.encode(outcomes)


def decode_outcomes(blob: bytes) -> list[Outcome]:
    """The outcomes of `encode_outcomes`, equal to those encoded (a body's tuples come back as lists, as JSON has)."""
    return _OUTCOMES.decode(blob)
