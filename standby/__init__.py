"""The clearance engine every site runs: domain, store, Ray workers and HTTP API.

This package knows nothing of replication or cutover; those build on it.
"""
