"""Alembic migrations (server/migrations, server/migrate.py) on SQLite and PostgreSQL.

The schema the models describe must be exactly what the migrations build; a database
made by the server before it had migrations is taken over with its rows; migrations
go down and up again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData, insert, inspect, text

from server import db, partitions
from server.app import create_app
from server.migrate import alembic_config, current, head, include_name, upgrade
from server.settings import Settings
from tests.conftest import LiveServer
from tests.server.conftest import (
    ADMIN,
    SHANGHAI,
    StallSim,
    empty_postgres,
    new_db_url,
    register_stall,
    reset_postgres,
    schema_signature,
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A database with no table at all: each test builds or migrates its own."""
    return new_db_url(request, request.param, tmp_path, schema=False)


def _engine(db_url: str) -> Engine:
    return db.make_engine(db_url)


def _columns(engine: Engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def _at(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)


def _what(change: Any) -> tuple[str, str, str | None]:
    """(kind, table, name) of one of compare_metadata's findings."""
    kind, obj = change[0], change[1]
    return kind, obj.table.name, obj.name


def test_the_migrations_build_exactly_the_models(db_url: str) -> None:
    """Exactly, on SQLite; on PostgreSQL exactly but for the sales partitioning's documented
    differences (``server.partitions.POSTGRES_DIFFERENCES``), every one of them there."""
    engine = _engine(db_url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            assert current(conn) == head()
            opts = {"compare_type": True, "include_name": include_name}
            diff = compare_metadata(MigrationContext.configure(conn, opts=opts), db.Base.metadata)
        if engine.dialect.name == "postgresql":
            assert {_what(change) for change in diff} == partitions.POSTGRES_DIFFERENCES
            assert len(diff) == len(partitions.POSTGRES_DIFFERENCES)
        else:
            assert diff == []
        upgrade(engine)  # a second start finds nothing to do
    finally:
        engine.dispose()


def test_down_to_nothing_and_up_again(db_url: str) -> None:
    engine = _engine(db_url)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine)
        assert "stall_prices" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def _legacy_rows(engine: Engine, sim: StallSim, with_name_en: bool) -> dict[str, Any]:
    """A stall and one of its sales, written as the server before migrations wrote them
    (on SQLite: times as wall clock without their offset)."""
    sale = sim.sale([("1001", "西红柿", 512, 300, "500g")])
    sold_at = dt.datetime.fromisoformat(sale["sold_at"])
    local = sold_at.astimezone(SHANGHAI)
    sqlite = engine.dialect.name == "sqlite"

    def stamp(t: dt.datetime) -> dt.datetime:
        return t.replace(tzinfo=None) if sqlite else t

    tables = MetaData()
    tables.reflect(engine)
    with engine.begin() as conn:
        conn.execute(insert(tables.tables["stalls"]), {
            "stall_id": sim.stall_id, "name": "王记", "token_sha256": "0" * 64,
            "public_key": sim.public_key, "created_at": stamp(dt.datetime.now(dt.UTC))})
        conn.execute(insert(tables.tables["sales"]), {
            "sale_id": sale["sale_id"], "stall_id": sim.stall_id, "receipt_no": sale["receipt_no"],
            "trace_code": sale["trace_code"], "sold_at": stamp(sold_at), "local_day": local.date(),
            "total_fen": sale["total_fen"], "digest": "0" * 64, "prev_hash": sale["prev_hash"],
            "signature": sale["signature"], "verified": True, "flags": [], "raw": sale,
            "received_at": stamp(dt.datetime.now(dt.UTC))})
        line = sale["lines"][0]
        conn.execute(insert(tables.tables["sale_lines"]), {
            "sale_id": sale["sale_id"], "idx": 0, "plu": line["plu"], "name": line["name"],
            "weight_g": line["weight_g"], "quantity": None, "unit_price_fen": line["unit_price_fen"],
            "price_unit": line["price_unit"], "amount_fen": line["amount_fen"], "batch_code": None})
        conn.execute(insert(tables.tables["rollup_stall_hour"]), {
            "local_day": local.date(), "hour": local.hour, "stall_id": sim.stall_id, "sales": 1,
            "total_fen": sale["total_fen"]})
        item = {"local_day": local.date(), "plu": line["plu"], "name": line["name"], "lines": 1,
                "weight_g": line["weight_g"], "quantity": 0, "amount_fen": line["amount_fen"]}
        if with_name_en:
            item["name_en"] = None
        conn.execute(insert(tables.tables["rollup_item_day"]), item)
    return sale


@pytest.mark.parametrize("made_with_name_en", [False, True], ids=["before-name_en", "with-name_en"])
def test_a_database_made_before_migrations_is_taken_over(db_url: str, made_with_name_en: bool) -> None:
    """What `create_all` of the server before migrations left: its tables and rows, no
    alembic_version."""
    engine = _engine(db_url)
    _at(engine, "0002" if made_with_name_en else "0001")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    sim = StallSim("S01")
    old_sale = _legacy_rows(engine, sim, made_with_name_en)
    engine.dispose()

    app = create_app(Settings(db_url=db_url, admin_token=ADMIN))
    engine = app.state.engine
    with engine.connect() as conn:
        assert current(conn) == head()
        # The new day rollups start from the history already stored.
        assert conn.execute(text("SELECT sales, total_fen FROM rollup_stall_day")).all() == [
            (1, old_sale["total_fen"])]
        assert conn.execute(text("SELECT stall_id, plu, weight_g, amount_fen "
                                 "FROM rollup_stall_item_day")).all() == [
            ("S01", "1001", 512, old_sale["total_fen"])]
    assert "name_en" in _columns(engine, "rollup_item_day")
    with LiveServer(app) as srv, srv.client() as c:
        page = c.get(f"/t/{old_sale['trace_code']}")
        assert page.status_code == 200
        shown = dt.datetime.fromisoformat(old_sale["sold_at"]).astimezone(SHANGHAI)
        assert shown.strftime("%H:%M:%S") in page.text
        assert c.get("/api/v1/stats/today").json()["sales"] == 1
        # The stall goes on selling on the migrated database.
        token = c.post("/api/v1/stalls", headers={"Authorization": f"Bearer {ADMIN}"},
                       json={"stall_id": "S02", "name": "乙"}).json()["token"]
        sim2 = StallSim("S02")
        sale = sim2.sale([("1003", "香蕉", 1000, 690, "kg")], line_extra={"name_en": "Banana"})
        r = c.post("/api/v1/sales", json={"sales": [sale]}, headers={"Authorization": f"Bearer {token}"})
        assert r.json()["accepted"] == 1, r.text
        assert c.get("/api/v1/stats/today").json()["sales"] == 2


def test_a_legacy_database_without_its_tables_stamped_keeps_its_rows(db_url: str) -> None:
    """Rows written before the takeover are there after it, sale lines included."""
    engine = _engine(db_url)
    _at(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("INSERT INTO server_meta (key, value) VALUES ('probe', 'kept')"))
    upgrade(engine)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT value FROM server_meta WHERE key = 'probe'")).scalar() \
                == "kept"
            assert current(conn) == head()
    finally:
        engine.dispose()


def test_0004_adds_the_shared_items_and_goes_down_keeping_the_rest(db_url: str) -> None:
    """Issue 18 item 4: a database at 0003 (a market already selling) gains ``shared_items``;
    down to 0003 again drops only that table."""
    engine = _engine(db_url)
    try:
        _at(engine, "0003")
        assert "shared_items" not in inspect(engine).get_table_names()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO server_meta (key, value) VALUES ('probe', 'kept')"))
        upgrade(engine)
        assert {"id", "stall_id", "item_id", "model", "doc", "withdrawn_at"} <= _columns(
            engine, "shared_items")
        indexes = {i["name"]: i for i in inspect(engine).get_indexes("shared_items")}
        assert indexes["ux_shared_items_stall_item"]["unique"]
        assert indexes["ix_shared_items_model"]["column_names"] == ["model", "id"]
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0003")
        assert "shared_items" not in inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT value FROM server_meta WHERE key = 'probe'")).scalar() == "kept"
            assert current(conn) == "0003"
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_the_tests_emptied_database_is_a_freshly_migrated_one(postgres_url: str) -> None:
    """``empty_postgres`` (what the ``db_url`` fixture gives every PostgreSQL test): no row left
    and the schema a fresh migration builds, whether it truncated or had to migrate again."""

    def schema() -> Any:
        engine = _engine(postgres_url)
        try:
            with engine.connect() as conn:
                return schema_signature(conn)
        finally:
            engine.dispose()

    reset_postgres(postgres_url)
    empty_postgres(postgres_url)
    fresh = schema()
    assert fresh is not None and ("sales", "p") in fresh[1]
    app = create_app(Settings(db_url=postgres_url, admin_token=ADMIN))
    with LiveServer(app) as srv:
        sim = StallSim("S01")
        register_stall(srv, sim)
    app.state.engine.dispose()
    engine = _engine(postgres_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM stalls")).scalar() == 1
        conn.execute(text("CREATE TABLE stray (x int)"))  # a test that changed the schema
    for _ in range(2):  # migrated again, then truncated
        empty_postgres(postgres_url)
        assert schema() == fresh
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM stalls")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM server_meta")).scalar() == 0
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO server_meta (key, value) VALUES ('k', 'v')"))
    engine.dispose()
