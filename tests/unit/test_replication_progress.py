"""The pure parts of replication progress, stream names, stream starts and a stream's end."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool

from replication.apply import ApplyResult
from replication.changes import Change, ChangeOp
from replication.errors import SourceUnavailable
from replication.heartbeat import SourceRetired, serving_primary
from replication.metrics import ReplicationMetrics
from replication.progress import NotCaughtUp, caught_up, committed_position, wait_until_applied
from replication.replicator import Replicator, ReplicatorOptions, StreamFinished, stream_done
from replication.sources import slot_name, stream_name, stream_sites
from replication.streams import StreamConflict, decide_start
from standby.store.schema import replication_state


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeSource:
    def __init__(self, positions: list[int], failures: int = 0):
        self.positions, self.failures, self.calls = list(positions), failures, 0

    def committed(self) -> int:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise SourceUnavailable("slot busy")
        return self.positions.pop(0) if len(self.positions) > 1 else self.positions[0]


@pytest.fixture
def standby():
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    replication_state.create(engine)
    yield engine
    engine.dispose()


def set_positions(engine, stream: str, positions: list[int]) -> None:
    with engine.begin() as conn:
        conn.execute(replication_state.delete().where(replication_state.c.stream == stream))
        conn.execute(replication_state.insert(), [
            {"stream": stream, "part": p, "position": pos, "changes": 0, "applied_at": 0.0}
            for p, pos in enumerate(positions)])


def test_caught_up_compares_positions_and_nothing_applied_is_never_caught_up():
    assert caught_up(10, 10) and caught_up(11, 10)
    assert not caught_up(9, 10)
    assert not caught_up(None, 0)


def test_not_caught_up_says_what_and_how_far():
    err = NotCaughtUp(120, 100, "A-to-B", 2.0)
    assert (err.target, err.applied, err.stream) == (120, 100, "A-to-B")
    assert "stream A-to-B" in str(err) and "120" in str(err) and "applied 100" in str(err)
    assert "20 positions" in str(err)
    assert "within 2 s" in str(err)
    assert "no positions" in str(NotCaughtUp(5, None, "A-to-B"))


def test_wait_returns_the_applied_position_once_the_standby_reaches_the_committed_position(standby):
    set_positions(standby, "A-to-B", [7, 5])
    clock, looks = FakeClock(), []

    def sleep(seconds: float) -> None:  # the stream moves on between looks
        looks.append(seconds)
        set_positions(standby, "A-to-B", [9, 9])
        clock.sleep(seconds)
    assert wait_until_applied(FakeSource([8]), standby, "A-to-B", timeout_s=5, clock=clock, sleep=sleep) == 9
    assert len(looks) == 1


def test_wait_takes_the_target_once_at_the_call(standby):
    set_positions(standby, "A-to-B", [10, 10])
    source = FakeSource([10, 50, 90])
    clock = FakeClock()
    assert wait_until_applied(source, standby, "A-to-B", timeout_s=1, clock=clock, sleep=clock.sleep) == 10
    assert source.calls == 1


def test_wait_raises_not_caught_up_after_the_timeout_of_the_injected_clock(standby):
    set_positions(standby, "A-to-B", [3, 4])
    clock = FakeClock()
    with pytest.raises(NotCaughtUp) as err:
        wait_until_applied(FakeSource([10]), standby, "A-to-B", timeout_s=1.0, clock=clock, sleep=clock.sleep,
                           poll_s=0.1)
    assert (err.value.target, err.value.applied) == (10, 3)
    assert 1.0 <= clock.now < 1.2


def test_wait_for_a_stream_the_standby_does_not_have_names_it(standby):
    clock = FakeClock()
    with pytest.raises(NotCaughtUp, match="no positions") as err:
        wait_until_applied(FakeSource([1]), standby, "B-to-A", target=1, timeout_s=0.3, clock=clock,
                           sleep=clock.sleep)
    assert err.value.applied is None


def test_committed_position_retries_a_busy_source():
    source, slept = FakeSource([42], failures=2), []
    assert committed_position(source, sleep=slept.append) == 42
    assert source.calls == 3 and len(slept) == 2


def test_stream_names_round_trip_and_refuse_what_cannot_be_one():
    assert stream_name("A", "B") == "A-to-B"
    assert stream_sites("HN-to-HCM") == ("HN", "HCM")
    assert slot_name(*stream_sites(stream_name("A", "B"))) == "standby_a_to_b"
    for bad in ("A", "A-to-", "A-to-B-to-C"):
        with pytest.raises(ValueError):
            stream_sites(bad)
    with pytest.raises(ValueError):
        stream_name("x-to-y", "B")


def test_a_serving_primary_is_a_primary_that_is_not_fenced():
    assert serving_primary("primary", "open") and serving_primary("primary", "frozen")
    assert not serving_primary("primary", "fenced")
    assert not serving_primary("standby", "open")
    assert not serving_primary(None, None)


def test_a_stream_is_done_only_when_its_source_retired_and_everything_committed_is_applied():
    retired = SourceRetired("A", "primary", "fenced", 3)
    asked = []

    def committed() -> int:
        asked.append(1)
        return 100
    assert not stream_done(None, 100, committed) and not asked, "a serving source is never asked"
    assert not stream_done(retired, 99, committed)
    assert stream_done(retired, 100, committed)
    message = StreamFinished("A-to-B", retired, 100).describe()
    assert message == "source A is no longer primary (fenced at epoch 3); stream A-to-B finished at position 100"


def test_a_fresh_start_is_written_and_a_rerun_keeps_it():
    never = lambda lowest: False  # noqa: E731
    assert decide_start({}, 2, 50, replace=False, continues=never) == ("write", 50)
    assert decide_start({0: 50, 1: 50}, 2, 50, replace=False, continues=never) == ("keep", 50)


def test_a_stream_prepared_then_streamed_on_is_kept_where_the_source_still_holds_its_changes():
    assert decide_start({0: 60, 1: 55}, 2, 50, replace=False, continues=lambda lowest: lowest >= 50) == ("keep", 55)


def test_a_start_that_would_skip_or_replay_changes_is_refused_unless_replaced():
    with pytest.raises(StreamConflict, match="position 40"):
        decide_start({0: 40, 1: 40}, 2, 50, replace=False, continues=lambda lowest: False)
    with pytest.raises(StreamConflict, match="partitions"):
        decide_start({0: 50}, 2, 50, replace=False, continues=lambda lowest: True)
    assert decide_start({0: 40, 1: 40}, 2, 50, replace=True, continues=lambda lowest: False) == ("write", 50)


class IdleSource:
    """A source with nothing new to read, whose committed position is `committed`."""

    read_ahead = False

    def __init__(self, committed: int):
        self.committed_at, self.asked = committed, 0

    def read(self, after: int, limit: int) -> list:
        return []

    def committed(self) -> int:
        self.asked += 1
        return self.committed_at

    def head(self) -> int:
        return self.committed_at

    def acknowledge(self, position: int) -> None:
        pass


class StoredPositions:
    def __init__(self, positions: dict[int, int]):
        self.stored = positions

    def positions(self, stream: str) -> dict[int, int]:
        return dict(self.stored)


def replicator_with(source, positions: dict[int, int], heartbeat):
    ticks = iter(range(10**6))
    options = ReplicatorOptions("A-to-B", partitions=len(positions), idle_sleep_s=0.0, heartbeat_interval_s=1.0)
    replicator = Replicator(source, None, StoredPositions(positions), options, ReplicationMetrics("A-to-B"),
                            heartbeat=heartbeat, clock=lambda: float(next(ticks)))
    assert replicator.start() is False
    return replicator


def test_run_returns_stream_finished_once_the_source_retired_and_beats_no_more():
    retired = SourceRetired("A", "standby", "fenced", 2)
    beats: list[float] = []

    def heartbeat(now: float):
        beats.append(now)
        return None if len(beats) < 3 else retired
    source = IdleSource(committed=5)
    replicator = replicator_with(source, {0: 5, 1: 5}, heartbeat)
    result = replicator.run(threading.Event())
    assert result == StreamFinished("A-to-B", retired, 5) == replicator.finished
    assert len(beats) == 3 and source.asked == 1, "the committed position is asked only once the source retired"
    replicator.step()
    assert len(beats) == 3, "a retired source is never beaten again"
    replicator.close()


def test_run_does_not_finish_while_the_standby_is_behind_the_retired_source():
    stop = threading.Event()
    source = IdleSource(committed=9)
    replicator = replicator_with(source, {0: 5, 1: 7}, lambda now: SourceRetired("A", "standby", "fenced", 2))
    original = source.committed

    def committed() -> int:  # stop the loop after a few looks: it must still be waiting
        if source.asked >= 3:
            stop.set()
        return original()
    source.committed = committed
    assert replicator.run(stop) is None and replicator.finished is None
    replicator.close()


class ScriptedSource(IdleSource):
    """Returns the scripted reads in turn, then nothing."""

    def __init__(self, reads: list[list[Change]]):
        super().__init__(committed=0)
        self.reads = list(reads)

    def read(self, after: int, limit: int) -> list:
        return self.reads.pop(0) if self.reads else []


class ApplyingPool:
    def apply(self, stream: str, windows: dict) -> list[ApplyResult]:
        return [ApplyResult(part, upto, len(share), None, None, 0.0) for part, (share, upto) in windows.items()]


class CountedStop(threading.Event):
    """Records each wait of the run loop (with the reads still scripted then) and stops it after `waits` waits."""

    def __init__(self, source: ScriptedSource, waits: int):
        super().__init__()
        self.source, self.left, self.waited_with_reads_left = source, waits, []

    def wait(self, timeout=None) -> bool:
        self.waited_with_reads_left.append(len(self.source.reads))
        self.left -= 1
        if self.left <= 0:
            self.set()
        return self.is_set()


def change(position: int) -> Change:
    return Change(position, "declarations", ChangeOp.INSERT, {"base": str(position)}, {"base": str(position)})


def test_a_read_shorter_than_a_window_means_caught_up_and_the_next_read_waits():
    full = [change(p) for p in range(1, 5)]  # a full window of 4
    source = ScriptedSource([full, [change(5), change(6)], [change(7)]])
    options = ReplicatorOptions("A-to-B", partitions=2, window=4, idle_sleep_s=0.02, heartbeat_interval_s=1.0)
    replicator = Replicator(source, ApplyingPool(), StoredPositions({0: 0, 1: 0}), options,
                            ReplicationMetrics("A-to-B"), clock=lambda: 0.0)
    assert replicator.start() is False
    stop = CountedStop(source, waits=3)
    assert replicator.run(stop) is None
    # After the full window the next read came at once (no wait with two reads left); after each short one, and
    # after the empty one, the loop waited.
    assert stop.waited_with_reads_left == [1, 0, 0]
    assert replicator.applied_position == 7
    replicator.close()
