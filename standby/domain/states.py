"""States as enums with explicit transition tables. An illegal transition raises."""
from __future__ import annotations

from enum import Enum

from standby.domain.errors import IllegalTransition


class Kind(str, Enum):
    """Declaration kind; the processing section follows from it (01 import, 02 export)."""

    IMPORT = "import"
    EXPORT = "export"

    @property
    def section(self) -> str:
        return "01" if self is Kind.IMPORT else "02"

    @property
    def predeclare_message(self) -> str:
        return "IDA" if self is Kind.IMPORT else "EDA"

    @property
    def register_message(self) -> str:
        return "IDC" if self is Kind.IMPORT else "EDC"

    @property
    def amend_message(self) -> str:
        return "IDE" if self is Kind.IMPORT else "EDE"


class Lane(str, Enum):
    GREEN = "green"
    YELLOW = "yellow"
    RED = "red"


class DeclarationState(str, Enum):
    PRE_DECLARED = "pre_declared"
    AWAITING_PAYMENT = "awaiting_payment"
    DOCUMENT_CHECK = "document_check"
    INSPECTION = "inspection"
    CLEARED = "cleared"
    REJECTED = "rejected"

    @property
    def is_terminal(self) -> bool:
        return self in (DeclarationState.CLEARED, DeclarationState.REJECTED)


class DeclarationEvent(str, Enum):
    LANE_GREEN = "lane_green"
    LANE_YELLOW = "lane_yellow"
    LANE_RED = "lane_red"
    OFFICER_APPROVE = "officer_approve"
    OFFICER_REJECT = "officer_reject"
    DUTY_PAID = "duty_paid"
    AMEND = "amend"


_S, _E = DeclarationState, DeclarationEvent
DECLARATION_TRANSITIONS: dict[tuple[DeclarationState, DeclarationEvent], DeclarationState] = {
    (_S.PRE_DECLARED, _E.LANE_GREEN): _S.AWAITING_PAYMENT,
    (_S.PRE_DECLARED, _E.LANE_YELLOW): _S.DOCUMENT_CHECK,
    (_S.PRE_DECLARED, _E.LANE_RED): _S.INSPECTION,
    (_S.PRE_DECLARED, _E.AMEND): _S.PRE_DECLARED,
    (_S.AWAITING_PAYMENT, _E.DUTY_PAID): _S.CLEARED,
    (_S.AWAITING_PAYMENT, _E.AMEND): _S.PRE_DECLARED,
    (_S.DOCUMENT_CHECK, _E.OFFICER_APPROVE): _S.AWAITING_PAYMENT,
    (_S.DOCUMENT_CHECK, _E.OFFICER_REJECT): _S.REJECTED,
    (_S.DOCUMENT_CHECK, _E.AMEND): _S.PRE_DECLARED,
    (_S.INSPECTION, _E.OFFICER_APPROVE): _S.AWAITING_PAYMENT,
    (_S.INSPECTION, _E.OFFICER_REJECT): _S.REJECTED,
}


def next_declaration_state(current: DeclarationState, event: DeclarationEvent) -> DeclarationState:
    try:
        return DECLARATION_TRANSITIONS[(current, event)]
    except KeyError:
        raise IllegalTransition("declaration", current, event) from None


LANE_EVENT = {Lane.GREEN: _E.LANE_GREEN, Lane.YELLOW: _E.LANE_YELLOW, Lane.RED: _E.LANE_RED}


class SiteRole(str, Enum):
    PRIMARY = "primary"
    STANDBY = "standby"


class IntakeState(str, Enum):
    """Whether a primary accepts writes. FROZEN holds requests during a cutover; FENCED is final for an epoch."""

    OPEN = "open"
    FROZEN = "frozen"
    FENCED = "fenced"


INTAKE_TRANSITIONS: dict[IntakeState, frozenset[IntakeState]] = {
    IntakeState.OPEN: frozenset({IntakeState.FROZEN, IntakeState.FENCED}),
    IntakeState.FROZEN: frozenset({IntakeState.OPEN, IntakeState.FENCED}),
    IntakeState.FENCED: frozenset({IntakeState.OPEN}),  # only together with a new epoch
}


def next_intake_state(current: IntakeState, target: IntakeState) -> IntakeState:
    if target not in INTAKE_TRANSITIONS[current]:
        raise IllegalTransition("intake", current, target)
    return target
