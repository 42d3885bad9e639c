"""Which site databases a Ray cluster's workers can reach: plain node lists in, a refusal or None out."""
from standby.placement import ClusterNode, sqlite_out_of_reach

HERE = "10.0.0.5"
SQLITE = "sqlite:////srv/standby/site-a.db"
POSTGRES = "postgresql+psycopg://standby@db-a:5432/site_a"


def node(ip: str, alive: bool = True, node_id: str = "a3f9c2d17be04e6a9c0d5b1e2f3a4b5c") -> ClusterNode:
    return ClusterNode(node_id, ip, alive)


def test_sqlite_on_a_cluster_with_a_node_on_another_machine_is_refused_naming_site_database_and_node():
    reason = sqlite_out_of_reach("A", SQLITE, HERE, [node(HERE), node("10.0.0.7")])
    assert reason is not None
    assert "site A" in reason and SQLITE in reason and "10.0.0.7" in reason and "a3f9c2d17be0" in reason
    assert "PostgreSQL" in reason  # says what to do


def test_sqlite_on_several_nodes_of_this_one_machine_is_allowed():
    assert sqlite_out_of_reach("A", SQLITE, HERE, [node(HERE), node(HERE, node_id="b" * 32)]) is None


def test_sqlite_on_a_single_node_is_allowed():
    assert sqlite_out_of_reach("A", SQLITE, HERE, [node(HERE)]) is None


def test_a_dead_node_on_another_machine_is_not_a_reason_to_refuse():
    assert sqlite_out_of_reach("A", SQLITE, HERE, [node(HERE), node("10.0.0.7", alive=False)]) is None


def test_postgresql_is_never_refused_whatever_the_nodes():
    assert sqlite_out_of_reach("A", POSTGRES, HERE, [node(HERE), node("10.0.0.7"), node("10.0.0.8")]) is None


def test_the_refusal_names_the_workers_that_would_open_the_database():
    reason = sqlite_out_of_reach("B", "sqlite:///site-b.db", HERE, [node("10.0.0.9")], workers="apply workers")
    assert reason is not None and "apply workers" in reason and "site B" in reason

