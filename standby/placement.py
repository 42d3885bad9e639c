"""Which databases a site's Ray workers can reach: decided from plain values (the Ray module gathers them).

A site's ClearanceWorkers (and a replicator's apply workers) open the database themselves, on whichever node of the
Ray cluster they were placed. A PostgreSQL server is reached over the network from any node; a SQLite file only from
the machine that holds it. So a SQLite database and a cluster with a node on another machine do not go together."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from standby.settings import is_sqlite_url


@dataclass(frozen=True)
class ClusterNode:
    """One node of a Ray cluster as the cluster reports it."""

    node_id: str
    ip: str
    alive: bool


def sqlite_out_of_reach(site_id: str, database_url: str, driver_ip: str, nodes: Iterable[ClusterNode],
                        workers: str = "clearance workers") -> str | None:
    """Why site `site_id`'s database cannot serve workers placed on this cluster, or None when it can.

    Contract: a SQLite `database_url` together with an alive node whose IP differs from `driver_ip` (the node this
    process runs on) is refused; the message names the site, the database, the first such node and what to do.
    Several nodes on the driver's own IP are allowed: they are Ray processes of this one machine (as the two-node
    test cluster is), which all open the same file. Dead nodes are ignored: Ray places nothing on them. Any other
    database (PostgreSQL) is reached over the network and is never refused here."""
    if not is_sqlite_url(database_url):
        return None
    remote = next((n for n in nodes if n.alive and n.ip != driver_ip), None)
    if remote is None:
        return None
    return (f"site {site_id}'s database {database_url} is a SQLite file on this machine ({driver_ip}), which the "
            f"{workers} placed on Ray node {remote.node_id[:12]} at {remote.ip} cannot open: run the site on "
            f"PostgreSQL to use a Ray cluster of several machines, or keep its Ray cluster on this machine")

