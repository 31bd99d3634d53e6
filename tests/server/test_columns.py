"""A database made before a column was added gets it when the server starts (server/columns.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from server.app import create_app
from server.db import make_engine
from server.settings import Settings
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, StallSim, register_stall


def _columns(db_url: str, table: str) -> set[str]:
    engine = make_engine(db_url)
    try:
        return {c["name"] for c in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_an_older_database_gets_the_english_item_name_column(db_url: str) -> None:
    settings = Settings(db_url=db_url, admin_token=ADMIN)
    create_app(settings).state.engine.dispose()
    engine = make_engine(db_url)
    with engine.begin() as conn:  # the table as older code made it
        conn.execute(text("ALTER TABLE rollup_item_day DROP COLUMN name_en"))
    engine.dispose()
    assert "name_en" not in _columns(db_url, "rollup_item_day")

    app = create_app(settings)
    assert "name_en" in _columns(db_url, "rollup_item_day")
    sim = StallSim("S01")
    with LiveServer(app) as srv, srv.client(register_stall(srv, sim)) as c:
        sale = sim.sale([("1001", "西红柿", 512, 300, "500g")], line_extra={"name_en": "Tomato"})
        assert c.post("/api/v1/sales", json={"sales": [sale]}).json()["accepted"] == 1
        items = c.get("/api/v1/stats/today").json()["items"]
        recent = c.get("/api/v1/sales-recent").json()
    assert [(it["name"], it["name_en"]) for it in items] == [("西红柿", "Tomato")]
    assert recent[0]["items"] == ["西红柿"] and recent[0]["items_en"] == ["Tomato"]
    # A second start finds nothing to add.
    create_app(settings).state.engine.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_lines_without_an_english_name_read_null(server: LiveServer) -> None:
    sim = StallSim("S01")
    with server.client(register_stall(server, sim)) as c:
        sale = sim.sale([("2001", "香菜", 100, 1600, "kg")])
        assert c.post("/api/v1/sales", json={"sales": [sale]}).json()["accepted"] == 1
        assert c.get("/api/v1/stats/today").json()["items"][0]["name_en"] is None
        assert c.get("/api/v1/sales-recent").json()[0]["items_en"] == [None]
