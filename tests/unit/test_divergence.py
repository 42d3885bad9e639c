"""The changes a promoted standby had not applied: per-partition positions decide, in commit order."""
from replication.changes import Change, ChangeOp
from replication.divergence import last_images, unapplied, unapplied_changes
from replication.replicator import partition_of


def _decl(position: int, base: str, state: str = "pre_declared") -> Change:
    return Change(position, "declarations", ChangeOp.UPDATE, {"base": base}, {"base": base, "state": state})


def _two_partitions() -> tuple[str, str]:
    """Two declaration bases that fall in different partitions of 2."""
    bases = [f"1000000{i:04d}" for i in range(50)]
    first = bases[0]
    other = next(b for b in bases if partition_of(_decl(1, b), 2) != partition_of(_decl(1, first), 2))
    return first, other


def test_a_change_counts_as_applied_only_up_to_its_own_partitions_position():
    a, b = _two_partitions()
    pa, pb = partition_of(_decl(1, a), 2), partition_of(_decl(1, b), 2)
    changes = [_decl(5, a), _decl(6, b), _decl(7, a), _decl(8, b)]
    lost = unapplied(changes, {pa: 7, pb: 5}, 2)
    assert [c.position for c in lost] == [6, 8]


def test_a_partition_without_a_position_has_applied_nothing():
    a, _ = _two_partitions()
    assert [c.position for c in unapplied([_decl(1, a), _decl(2, a)], {}, 2)] == [1, 2]


class _Log:
    """A ChangeSource's `read` over a list (pure stand-in for the old primary's change log)."""

    def __init__(self, changes):
        self.changes, self.reads = changes, []

    def read(self, after, limit):
        self.reads.append(after)
        return [c for c in self.changes if c.position > after][:limit]


def test_unapplied_changes_reads_from_the_lowest_position_to_the_end_in_windows():
    a, b = _two_partitions()
    pa, pb = partition_of(_decl(1, a), 2), partition_of(_decl(1, b), 2)
    log = _Log([_decl(p, a if p % 2 else b) for p in range(1, 12)])
    lost = unapplied_changes(log, {pa: 9, pb: 4}, 2, window=3)
    assert [c.position for c in lost] == [6, 8, 10, 11]
    assert log.reads[0] == 4  # starts at the lowest partition position


def test_last_images_keep_the_last_change_of_each_row():
    a, b = _two_partitions()
    images = last_images([_decl(1, a, "pre_declared"), _decl(2, b), _decl(3, a, "registered")])
    assert [c.row["state"] for c in images.values()] == ["registered", "pre_declared"]
