"""standbyctl drill: the disaster-recovery drill (plan, run, sampler, judgement, report)."""
