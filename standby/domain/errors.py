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
