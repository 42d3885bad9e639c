"""The runbook engine: runbooks as validated YAML (spec, loader), a pure planner (plan.next_move over the journal),
an executor that journals intent before it acts (executor), the action registry (actions) and the run's metrics.
Generic: the switchover's own actions live in cutover/actions and are registered by the composition root."""
