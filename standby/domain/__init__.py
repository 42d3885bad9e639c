"""Pure clearance logic: no I/O, no clock reads, unit-tested with plain values."""
