"""The project's one percentile (loadtests.percentile): always a measured value, the higher rank, Locust's own rule for
the percentiles the project reports, the same over raw values and over a histogram of them."""
import random
from collections import Counter

import pytest

from loadtests.percentile import histogram_percentile, percentile, percentile_ms


def locusts_rule(values: list[float], p: float) -> float:
    """locust.stats.calculate_response_time_percentile, written out from its source: walk down from the slowest
    until at most int(p x n) values remain below."""
    counts, total = Counter(values), len(values)
    below, processed = int(total * p / 100), 0
    for value in sorted(counts, reverse=True):
        processed += counts[value]
        if total - processed <= below:
            return value
    return min(counts)


def test_small_samples_by_hand():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 3.0  # the higher of the two middle values, never 2.5
    assert percentile(range(1, 101), 99) == 100.0
    assert percentile(range(1, 101), 50) == 51.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([5.0, 400.0] + [8.0] * 198, 99) == 8.0


def test_a_percentile_is_always_one_of_the_values():
    rng = random.Random(7)
    for _ in range(200):
        values = [rng.lognormvariate(3, 1) for _ in range(rng.randint(1, 300))]
        for p in (50, 90, 95, 99, 99.9):
            assert percentile(values, p) in values


@pytest.mark.parametrize("p", [50, 90, 95, 99])
def test_it_is_locusts_rule_for_the_reported_percentiles(p):
    rng = random.Random(p)
    for n in list(range(1, 250)) + [999, 1000, 1001, 4321]:
        values = [float(rng.randint(1, 400)) for _ in range(n)]
        assert percentile(values, p) == locusts_rule(values, p), (n, p)


def test_a_histogram_gives_what_its_values_repeated_give():
    rng = random.Random(3)
    for _ in range(100):
        counts = Counter({float(rng.randint(1, 60)): rng.randint(1, 40) for _ in range(rng.randint(1, 20))})
        repeated = [value for value, times in counts.items() for _ in range(times)]
        for p in (50, 95, 99):
            assert histogram_percentile(counts, p) == percentile(repeated, p)


def test_no_values_give_none():
    assert percentile([], 99) is None
    assert histogram_percentile({}, 99) is None
    assert histogram_percentile({12.0: 0}, 99) is None
    assert percentile_ms([], 99) is None


@pytest.mark.parametrize("p", [0, -1, 100.5, 0.0])
def test_a_percentile_outside_0_to_100_is_refused(p):
    with pytest.raises(ValueError, match="over 0 and at most 100"):
        percentile([1.0, 2.0], p)


def test_milliseconds_from_seconds_rounded():
    assert percentile_ms([0.0123456, 0.002, 0.5], 50) == 12.3
    assert percentile_ms([0.0123456], 99, 3) == 12.346
