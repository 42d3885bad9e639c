"""The cutover's actions for the runbook engine: what a switchover (and later failover, failback, org change) does
to the sites and the witness. Each is idempotent (see cutover.runbook.actions for the contract)."""
