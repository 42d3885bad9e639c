"""The API's read statements (built once, with bound parameters) on a real PostgreSQL, as on SQLite over HTTP."""
from __future__ import annotations

import random

import pytest
from sqlalchemy import Engine, select

from standby.clearance.commands import Op
from standby.store import reads
from standby.store.schema import declarations, goods_lines
from tests.integration.postgres_support import (  # noqa: F401  (fixtures included)
    assert_all,
    by_number,
    engine,
    pipeline,
    pre_declarations,
    rows,
    site,
)

pytestmark = pytest.mark.postgres


def test_reads_answer_on_postgres(site: Engine) -> None:
    worker = pipeline(site)
    created = worker.process(pre_declarations(site, 60, random.Random(31), "rd"))
    assert_all(created, 201)
    office_of = {o.body["number"]: o.body["office_code"] for o in created}
    assert_all(worker.process([by_number(Op.REGISTER, n, office_of[n], f"reg-{n}") for n in office_of]), 200)
    stored = rows(site, select(declarations))
    some = stored[0]
    with site.connect() as conn:
        row = reads.declaration(conn, some["base"])
        assert row == some
        assert reads.declaration(conn, "99999999999") is None
        lines = reads.goods(conn, some["base"])
        assert [line["line_no"] for line in lines] == list(range(1, some["line_count"] + 1))
        assert lines == rows(site, select(goods_lines).where(goods_lines.c.declaration_base == some["base"])
                             .order_by(goods_lines.c.line_no))
        assert reads.office_of_declaration(conn, some["base"]) == some["office_code"]
        checked = [r for r in stored if r["officer_id"] is not None]
        assert checked
        officer = checked[0]["officer_id"]
        assert reads.office_of_officer(conn, officer) == checked[0]["office_code"]
        waiting = {r["base"] for r in checked if r["officer_id"] == officer}
        queue = reads.officer_queue(conn, officer, 100)
        assert {r["base"] for r in queue} == waiting and len(queue) == len(waiting)
        assert [r["registered_at"] for r in queue] == sorted(r["registered_at"] for r in queue)  # oldest first
        assert {r["state"] for r in queue} <= set(reads.QUEUE_STATES)
        assert len(reads.officer_queue(conn, officer, 1)) == 1
