"""Domain refusals: a machine-readable code, a sentence for a person, and the field at fault."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    """Why a command was refused. `status` is the HTTP status the API maps it to."""

    code: str
    message: str
    field: str | None = None
    status: int = 422

    def as_dict(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body

    def envelope(self) -> dict:
        """The body every refusal is sent with, over HTTP and from a worker alike."""
        return {"error": self.as_dict()}


class DomainError(Exception):
    """Raised by pure domain code; carries the refusal the caller reports."""

    def __init__(self, code: str, message: str, field: str | None = None, status: int = 422):
        super().__init__(message)
        self.refusal = Refusal(code, message, field, status)


class IllegalTransition(DomainError):
    def __init__(self, what: str, current: object, event: object):
        super().__init__(
            "illegal_transition",
            f"{what} cannot go from {getattr(current, 'value', current)} by {getattr(event, 'value', event)}",
            status=409,
        )
        self.current = current
        self.event = event


class StaleEpoch(DomainError):
    """A move made under an epoch that the row's epoch does not allow: older than the row's, or not the one the
    caller expected. `current_epoch` is the row's, `epoch` the one given."""

    def __init__(self, message: str, *, current_epoch: int, epoch: int, code: str = "stale_epoch"):
        super().__init__(code, message, status=409)
        self.current_epoch = current_epoch
        self.epoch = epoch
