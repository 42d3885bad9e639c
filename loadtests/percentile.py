"""The project's one percentile. Every p50/p95/p99 it reports (the drill, the benches, the demo, the Locust SLO check)
comes from here, and means one thing: numpy's percentile with method="higher", the value at rank ceil(p/100 x (n-1))
of the sorted values (0-based).

Why this definition: it is always a value that was measured, never one interpolated between two; it rounds towards
the slower value, so a p99 that meets a target really has 99% of the values at or under it; and for the percentiles
we report (50, 90, 95, 99) it is exactly Locust's own rule (locust.stats: walk down from the slowest until at most
int(p x n) values remain), so a figure from our latency logs agrees with the table an SRE reads in Locust
(tests/integration/test_locust.py checks that). Locust itself is not imported for it: importing locust patches the
standard library with gevent."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy


def _checked(p: float) -> float:
    if not 0 < p <= 100:
        raise ValueError(f"a percentile is over 0 and at most 100, not {p!r}")
    return p


def percentile(values: Iterable[float], p: float) -> float | None:
    """The p-th percentile (0 < p <= 100) of `values`; None when there are none."""
    data = numpy.fromiter(values, dtype=float)
    return float(numpy.percentile(data, _checked(p), method="higher")) if data.size else None


def histogram_percentile(counts: Mapping[float, int], p: float) -> float | None:
    """The p-th percentile (0 < p <= 100) of values given as {value: how many times}: the same as percentile() over
    every value repeated its count; None when the counts add up to none."""
    values = numpy.fromiter(counts.keys(), dtype=float, count=len(counts))
    times = numpy.fromiter(counts.values(), dtype=numpy.int64, count=len(counts))
    data = numpy.repeat(values, times)
    return float(numpy.percentile(data, _checked(p), method="higher")) if data.size else None


def percentile_ms(seconds: Iterable[float], p: float, digits: int = 1) -> float | None:
    """percentile() of durations in seconds, in milliseconds rounded to `digits`; None when there are none."""
    value = percentile(seconds, p)
    return None if value is None else round(value * 1000, digits)
