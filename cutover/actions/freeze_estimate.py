"""How long a switchover's freeze will last, estimated before anything is frozen (pure).

Vitess learned this the hard way: a busy keyspace froze its writes, then timed out waiting for a lagging replica.
The freeze covers the drain of in-flight batches, the standby's catch-up on what it has not applied yet, and the
fixed steps between freeze and resume (epoch bump, promotion, fixing the reverse stream's start, resume). Catch-up
dominates: with intake stopped the standby only has its backlog left, which it applies at its apply rate; when no
rate is known, the backlog in time (the lag) is the bound, since a standby that keeps up applies faster than the
primary commits.
"""
from __future__ import annotations

from dataclasses import dataclass

# Measured on the 2-core class of machine (BENCHMARKS.md, switchover): epoch bump, promote, reverse-stream start
# and resume together take well under this; the rest of the budget is the standby's catch-up.
DEFAULT_FIXED_STEPS_S = 0.25
SAFETY_FACTOR = 1.5


@dataclass(frozen=True)
class FreezeEstimate:
    seconds: float
    catch_up_s: float
    fixed_s: float
    budget_s: float
    reason: str

    @property
    def within_budget(self) -> bool:
        return self.seconds <= self.budget_s


def estimate_freeze(*, lag_s: float, pending_changes: int | None, apply_rate_per_s: float | None,
                    budget_s: float, fixed_steps_s: float = DEFAULT_FIXED_STEPS_S) -> FreezeEstimate:
    """The freeze's expected length from the standby's lag (seconds behind the primary's newest commit), the changes
    it has still to apply and its apply rate (either may be unknown), against `budget_s`.

    Catch-up is the backlog over the apply rate when both are known, else the lag; whichever way, times a safety
    factor, because the rate was measured while the standby shared the machine with intake."""
    if lag_s < 0 or budget_s <= 0 or fixed_steps_s < 0:
        raise ValueError("lag and fixed steps must be >= 0 and the budget > 0")
    if pending_changes is not None and apply_rate_per_s:
        catch_up = pending_changes / apply_rate_per_s
        how = f"{pending_changes:,} changes to apply at {apply_rate_per_s:,.0f}/s"
    else:
        catch_up = lag_s
        how = f"lag {lag_s:.2f} s"
    catch_up *= SAFETY_FACTOR
    total = catch_up + fixed_steps_s
    verdict = "within" if total <= budget_s else "OVER"
    return FreezeEstimate(total, catch_up, fixed_steps_s, budget_s,
                          f"estimated freeze {total:.2f} s ({how}, x{SAFETY_FACTOR} + {fixed_steps_s:.2f} s of fixed "
                          f"steps) is {verdict} the budget of {budget_s:.2f} s")
