"""Load generation and benchmarks. Speaks to the system over HTTP only."""
