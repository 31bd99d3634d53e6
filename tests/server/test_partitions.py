"""On PostgreSQL, sales live in monthly partitions, and a past month archives (``server.partitions``).

Archiving detaches the month's partition and moves its lines aside; what makes a sale unique
(``sale_keys``) stays, so a sale sent again after its month is archived is still a duplicate,
and the next receipt of a stall still finds its predecessor for the chain check.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import text

from server import ConfigError, partitions
from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, SHANGHAI, StallSim, register_stall, reset_postgres

pytestmark = pytest.mark.postgres


def _where(engine: Any) -> dict[str, int]:
    with engine.connect() as conn:
        return {str(t): int(n) for t, n in conn.execute(text(
            "SELECT tableoid::regclass, count(*) FROM sales GROUP BY 1"))}


def test_a_past_month_moves_out_of_the_default_partition_and_archives(postgres_url: str) -> None:
    reset_postgres(postgres_url)
    app = create_app(Settings(db_url=postgres_url, admin_token=ADMIN))
    engine = app.state.engine
    now = dt.datetime.now(SHANGHAI)
    today = now.date()
    # Three months back: outside the months kept ready (one before today's, two after).
    old = partitions.month_of(today - dt.timedelta(days=95)) + dt.timedelta(days=14)
    old_month = partitions.month_of(old)
    assert old_month not in partitions.around(today)
    with LiveServer(app) as srv:
        sim = StallSim("S01")
        token = register_stall(srv, sim)

        def upload(sale: dict[str, Any]) -> dict[str, Any]:
            with srv.client(token) as c:
                r = c.post("/api/v1/sales", json={"sales": [sale]})
            assert r.status_code == 200, r.text
            return dict(r.json()["results"][0])

        at = dt.datetime.combine(old, dt.time(9, 30), SHANGHAI)
        first = sim.sale([("1001", "西红柿", 500, 300, "500g")], sold_at=at)
        second = sim.sale([("1002", "黄瓜", 400, 250, "500g")], sold_at=at + dt.timedelta(hours=1))
        assert [upload(s)["status"] for s in (first, second)] == ["accepted", "accepted"]
        assert _where(engine) == {partitions.DEFAULT_PARTITION: 2}

        assert partitions.partition_name(old_month) in partitions.ensure(engine, old)
        assert _where(engine) == {partitions.partition_name(old_month): 2}  # moved out of the default

        with pytest.raises(ConfigError, match="not over yet"):
            partitions.archive(engine, today, today)
        done = partitions.archive(engine, old_month, today)
        assert (done.sales, done.lines) == (2, 2)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM sales")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM sale_lines")).scalar() == 0
            assert conn.execute(text(f"SELECT count(*) FROM {done.sales_table}")).scalar() == 2
            assert conn.execute(text(f"SELECT count(*) FROM {done.lines_table}")).scalar() == 2
        with pytest.raises(ConfigError, match="no attached partition"):
            partitions.archive(engine, old_month, today)
        # The daily round does not make an archived month again (its table is still there).
        assert partitions.partition_name(old_month) not in partitions.ensure(engine, old)

        # Sent again after its month is archived: still the same sale, stored once.
        assert upload(second)["status"] == "duplicate"
        # The next receipt chains onto the archived one: no chain mismatch.
        third = upload(sim.sale([("1001", "西红柿", 600, 300, "500g")]))
        assert third["status"] == "accepted" and third["flags"] == [], third
        assert _where(engine) == {partitions.partition_name(partitions.month_of(today)): 1}
        # A different sale reusing an archived receipt's trace code is refused, as before.
        sim.receipt_no = 1
        reused = upload(sim.sale([("1001", "西红柿", 700, 300, "500g")]))
        assert reused["status"] != "accepted", reused
    names = [p.name for p in partitions.partitions(engine)]
    assert partitions.partition_name(old_month) not in names and partitions.DEFAULT_PARTITION in names
