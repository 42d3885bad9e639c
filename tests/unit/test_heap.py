"""standby.heap.freeze_startup_heap: what is alive when it is called is out of every later collection."""
import gc

from standby.heap import freeze_startup_heap


def test_objects_alive_at_freeze_are_skipped_by_collections_and_later_ones_are_not():
    built_to_last = [object()]  # a container: tracked by the collector
    try:
        freeze_startup_heap()
        frozen = gc.get_freeze_count()
        made_after = [object()]
        tracked = {id(o) for o in gc.get_objects()}
        assert frozen > 0
        assert id(built_to_last) not in tracked
        assert id(made_after) in tracked
    finally:
        gc.unfreeze()  # the rest of the test session collects as before


def test_garbage_cycles_made_before_the_freeze_are_collected_by_it():
    class Node:
        pass

    a, b = Node(), Node()
    a.peer, b.peer = b, a
    del a, b
    try:
        freeze_startup_heap()
        assert not any(isinstance(o, Node) for o in _frozen_objects())
    finally:
        gc.unfreeze()


def _frozen_objects():
    gc.unfreeze()  # frozen objects go back to the oldest generation, where get_objects sees them
    try:
        return gc.get_objects()
    finally:
        gc.freeze()
