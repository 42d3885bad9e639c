"""The cutover itself: the witness (lease, epoch), the runbook engine and its actions, the front, and later org
change sets. Builds on `standby` and `replication`; nothing here imports `standbyctl`."""
