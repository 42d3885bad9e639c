"""Whether an enterprise may register declarations."""
from __future__ import annotations

TAX_DEBT_LIMIT_DAYS = 90


def registration_block(tax_code: str, status: str, tax_debt_days: int) -> str | None:
    """The reason registration is refused, as a sentence, or None when the enterprise may register."""
    if status == "suspended":
        return f"enterprise {tax_code} is suspended and may not register declarations"
    if status == "dissolved":
        return f"enterprise {tax_code} is dissolved and may not register declarations"
    if tax_debt_days > TAX_DEBT_LIMIT_DAYS:
        return (f"enterprise {tax_code} has tax debt overdue {tax_debt_days} days "
                f"(over {TAX_DEBT_LIMIT_DAYS}); registration is refused until it is paid")
    return None
