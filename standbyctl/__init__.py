"""standbyctl: the operator's command line, the composition root. It wires `standby`, `replication` and `cutover`
together; nothing imports it."""
