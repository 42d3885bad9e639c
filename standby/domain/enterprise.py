"""Whether an enterprise may register declarations."""
from __future__ import annotations

TAX_DEBT_LIMIT_DAYS = 90


def registration_block(tax_code: str, status: str, tax_debt_days: int) -> str | None:
    """The reason registration is refused, as a sentence, or None when the enterprise may register."""
    if status == "suspended":
        return (f"Enterprise {tax_code} is suspended by the tax authority and cannot register declarations "
                "until it is reinstated.")
    if status == "dissolved":
        return f"Enterprise {tax_code} has been dissolved and can no longer register declarations."
    if tax_debt_days > TAX_DEBT_LIMIT_DAYS:
        return (f"Enterprise {tax_code} has tax overdue for {tax_debt_days} days (more than {TAX_DEBT_LIMIT_DAYS}); "
                "registration is blocked until the debt is paid.")
    return None
