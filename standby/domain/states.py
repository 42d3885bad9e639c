"""States as enums with explicit transition tables. An illegal transition raises."""
from __future__ import annotations

from enum import Enum

from standby.domain.errors import IllegalTransition, StaleEpoch


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


class EpochRule(str, Enum):
    """What a transition asks of the epoch it is made under, compared with the row's epoch.

    SAME: the caller names the epoch it expects the row to be at (a freeze or resume by the current primary's
    runbook); NEWER: the caller brings a newer epoch from the witness (fencing, promotion)."""

    SAME = "same"
    NEWER = "newer"


_I, _R = IntakeState, EpochRule
INTAKE_TRANSITIONS: dict[tuple[IntakeState, IntakeState], frozenset[EpochRule]] = {
    (_I.OPEN, _I.FROZEN): frozenset({_R.SAME, _R.NEWER}),  # a freeze; or a standby promoted, held until resume
    (_I.FROZEN, _I.OPEN): frozenset({_R.SAME}),  # resume after a freeze
    (_I.OPEN, _I.FENCED): frozenset({_R.NEWER}),  # another site was promoted
    (_I.FROZEN, _I.FENCED): frozenset({_R.NEWER}),
    (_I.FENCED, _I.FROZEN): frozenset({_R.NEWER}),  # a fenced site promoted again (held until resume)
    (_I.FENCED, _I.OPEN): frozenset({_R.NEWER}),
}

ROLE_TRANSITIONS: dict[tuple[SiteRole, SiteRole], EpochRule] = {
    (SiteRole.STANDBY, SiteRole.PRIMARY): EpochRule.NEWER,  # promotion
    (SiteRole.PRIMARY, SiteRole.STANDBY): EpochRule.NEWER,  # fenced by a newer primary
}


def epoch_rule(current_epoch: int, epoch: int) -> EpochRule | None:
    """Which rule a move from `current_epoch` to `epoch` satisfies: SAME, NEWER, or None for an older epoch."""
    if epoch == current_epoch:
        return EpochRule.SAME
    return EpochRule.NEWER if epoch > current_epoch else None


def next_intake_state(current: IntakeState, target: IntakeState, *, current_epoch: int, epoch: int) -> IntakeState:
    """The intake state after moving from `current` (at `current_epoch`) to `target` under `epoch`.

    Raises IllegalTransition for a move the table does not list, and StaleEpoch when the move is listed but not
    under this epoch (an older epoch, a same-epoch move that needs a newer one, or a newer one for a same-epoch move)."""
    allowed = INTAKE_TRANSITIONS.get((current, target))
    if allowed is None:
        raise IllegalTransition("intake", current, target)
    _check_epoch("intake", current, target, allowed, current_epoch, epoch)
    return target


def next_role(current: SiteRole, target: SiteRole, *, current_epoch: int, epoch: int) -> SiteRole:
    """The role after moving from `current` to `target` under `epoch`; the same errors as next_intake_state."""
    rule = ROLE_TRANSITIONS.get((current, target))
    if rule is None:
        raise IllegalTransition("role", current, target)
    _check_epoch("role", current, target, frozenset({rule}), current_epoch, epoch)
    return target


def _check_epoch(what: str, current, target, allowed: frozenset[EpochRule], current_epoch: int, epoch: int) -> None:
    if epoch_rule(current_epoch, epoch) not in allowed:
        wording = {EpochRule.SAME: f"the same epoch ({current_epoch})",
                   EpochRule.NEWER: f"an epoch newer than {current_epoch}"}
        needs = " or ".join(wording[r] for r in sorted(allowed, key=lambda r: r.value))
        raise StaleEpoch(f"{what} {current.value} -> {target.value} needs {needs}, not epoch {epoch}",
                         current_epoch=current_epoch, epoch=epoch)
