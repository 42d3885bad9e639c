"""`standbyctl watch`: one per site, like Patroni's HA loop or pg_auto_failover's monitor.

decide.py is the pure decision (what to do about the primary, and the rule that says so); loop.py observes
(health checks of the primary, the witness, this site's control row), decides, audits every change of decision in
the witness and, in automatic mode, runs the failover runbook through an injected callable; metrics.py its
Prometheus metrics. The composition root (standbyctl/commands/watch.py) wires the runbook executor in.
"""
