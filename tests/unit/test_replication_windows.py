"""Pure parts of replication: which partition a change goes to, and how a window is shared out."""
from hypothesis import given, strategies as st

from replication.apply import _runs
from replication.changes import Change, ChangeOp
from replication.replicator import partition_of, windows_by_partition


def change(position: int, table: str, key: dict, op: ChangeOp = ChangeOp.INSERT, seq: int = 0) -> Change:
    return Change(position, table, op, key, None if op is ChangeOp.DELETE else dict(key), seq=seq)


def test_a_declarations_rows_share_one_partition():
    base = "10000000042"
    parts = {partition_of(change(1, "declarations", {"base": base}), 4),
             partition_of(change(1, "goods_lines", {"declaration_base": base, "line_no": 3}), 4),
             partition_of(change(1, "officer_assignments", {"declaration_base": base, "amendment": 0}), 4)}
    assert len(parts) == 1


def test_other_rows_go_by_table_and_key_and_stay_put():
    a = change(1, "enterprises", {"tax_code": "0100000001"})
    assert partition_of(a, 8) == partition_of(change(99, "enterprises", {"tax_code": "0100000001"}), 8)
    spread = {partition_of(change(1, "enterprises", {"tax_code": f"01{i:08d}"}), 4) for i in range(200)}
    assert spread == {0, 1, 2, 3}


def test_every_partition_records_the_window_end_and_gets_only_what_is_above_its_position():
    changes = [change(p, "enterprises", {"tax_code": f"01{p:08d}"}) for p in range(1, 41)]
    positions = {0: 10, 1: 20}
    windows = windows_by_partition(changes, 2, positions)
    assert set(windows) == {0, 1}
    for part, (share, upto) in windows.items():
        assert upto == 40
        assert all(c.position > positions[part] and partition_of(c, 2) == part for c in share)
    assert sum(len(share) for share, _ in windows.values()) == sum(
        1 for c in changes if c.position > positions[partition_of(c, 2)])


@given(st.lists(st.tuples(st.sampled_from(["enterprises", "officers", "wards"]), st.booleans()), max_size=60))
def test_runs_keep_order_and_group_only_neighbours(spec):
    changes = [change(i + 1, table, {"k": i}, ChangeOp.DELETE if is_delete else ChangeOp.UPDATE)
               for i, (table, is_delete) in enumerate(spec)]
    runs = list(_runs(changes))
    assert [c for run in runs for c in run] == changes  # nothing reordered, nothing lost
    for run in runs:
        assert len({(c.table, c.op is ChangeOp.DELETE) for c in run}) == 1
    for left, right in zip(runs, runs[1:]):
        assert (left[-1].table, left[-1].op is ChangeOp.DELETE) != (right[0].table, right[0].op is ChangeOp.DELETE)
