from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, text

from edge.integrity import GENESIS_HASH, public_key_b64, sale_digest, sign_sale
from edge.pricing import line_amount_fen
from edge.tracecode import make_trace_code, stall_number
from server.app import create_app
from server.settings import Settings
from tests.conftest import POSTGRES_URL, LiveServer

ADMIN = "test-admin-token"
SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def reset_postgres(url: str = POSTGRES_URL) -> None:
    """An empty ``public`` schema in the PostgreSQL database at ``url``."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


#: Everything in ``public`` (tables, partitions, indexes, sequences, functions, triggers) and the
#: migration it is at, as a fresh migration of this code leaves it, by database URL.
_MIGRATED: dict[str, tuple[str, frozenset[tuple[str, str]]]] = {}

_SCHEMA = text("""
    SELECT c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'public'
    UNION ALL
    SELECT p.proname, 'function' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname = 'public'
    UNION ALL
    SELECT t.tgname, 'trigger' FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND NOT t.tgisinternal
""")


def schema_signature(conn: Any) -> tuple[str, frozenset[tuple[str, str]]] | None:
    if conn.execute(text("SELECT to_regclass('public.alembic_version')")).scalar() is None:
        return None
    version = conn.execute(text("SELECT string_agg(version_num, ',') FROM alembic_version")).scalar()
    return str(version), frozenset((str(name), str(kind)) for name, kind in conn.execute(_SCHEMA))


def empty_postgres(url: str) -> None:
    """The PostgreSQL database at ``url`` migrated to this code's schema, with no row in it.

    Where the schema is exactly what a fresh migration left (nothing a test added, dropped or
    migrated down) its tables are truncated: a third of a second less per test than dropping
    the schema and migrating again, which happens otherwise (the first time, and after any
    test that changed the schema)."""
    from server import partitions
    from server.migrate import upgrade

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            now = schema_signature(conn)
            if now is not None and now == _MIGRATED.get(url):
                tables = [name for name, kind in now[1] if kind in ("r", "p") and name != "alembic_version"]
                conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in sorted(tables))
                                  + " RESTART IDENTITY CASCADE"))
                return
        reset_postgres(url)
        upgrade(engine)
        # this month's and the next partitions, as create_app makes them (the same day: none more)
        partitions.ensure(engine, dt.datetime.now(Settings().tz).date())
        with engine.begin() as conn:
            fresh = schema_signature(conn)
        assert fresh is not None
        _MIGRATED[url] = fresh
    finally:
        engine.dispose()


def new_db_url(request: pytest.FixtureRequest, kind: str, tmp_path: Any, *, schema: bool = True) -> str:
    """An empty database of ``kind`` (``sqlite``: a new file; ``postgresql``: the machine's, with
    no row in it, and with no table either where not ``schema``)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'market.db'}"
    # Asked for only here, so a run of SQLite tests alone starts no PostgreSQL server.
    url: str = request.getfixturevalue("postgres_url")
    if schema:
        empty_postgres(url)
    else:
        reset_postgres(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    return new_db_url(request, request.param, tmp_path)


@pytest.fixture
def server(db_url: str) -> Iterator[LiveServer]:
    app = create_app(Settings(db_url=db_url, admin_token=ADMIN))
    with LiveServer(app) as srv:
        yield srv


@contextmanager
def writer_server(db_url: str, *, allow_fallback: bool = False, **settings: Any) -> Iterator[LiveServer]:
    """A server whose uploads, batches too, are all stored by its writer process
    (``server.writeprocess``, PostgreSQL), started with the server and waited for; on leaving,
    checks that its own group commit stored none (unless ``allow_fallback``: the test stops
    the process)."""
    app = create_app(Settings(db_url=db_url, admin_token=ADMIN, write_process="on", **settings))
    app.state.writer.batch_min = 10**9  # batches too, which the server's own writer stores otherwise
    with LiveServer(app) as srv:
        deadline = time.monotonic() + 60
        while app.state.writer.state != "ready":
            assert time.monotonic() < deadline, f"writer process: {app.state.writer.state}"
            time.sleep(0.05)
        yield srv
        assert allow_fallback or app.state.group_commit.uploads == 0, \
            "an upload was stored past the writer process"


class StallSim:
    """Builds signed, chained sales the way a stall does (of market 310106-001 by default,
    the server's default market)."""

    def __init__(self, stall_id: str = "S01", *, region: str = "310106", market: int = 1) -> None:
        self.stall_id = stall_id
        self.region, self.market = region, market
        self.key = Ed25519PrivateKey.generate()
        self.public_key = public_key_b64(self.key)
        self.receipt_no = 0
        self.prev = GENESIS_HASH

    def sale(self, lines: list[tuple[str, str, int, int, str]], *,
             sold_at: dt.datetime | None = None, sign: bool = True,
             extra: dict[str, Any] | None = None,
             line_extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """A sale of weighed lines (plu, name, weight_g, unit price, unit); ``extra`` fields are
        added to the sale and ``line_extra`` to each line before it is signed, as stalls do."""
        self.receipt_no += 1
        out_lines = []
        for plu, name, weight_g, price, unit in lines:
            out_lines.append({
                "plu": plu, "name": name, "weight_g": weight_g, "quantity": None,
                "unit_price_fen": price, "price_unit": unit,
                "amount_fen": line_amount_fen(unit_price_fen=price, price_unit=unit,
                                              weight_g=weight_g),
                "batch_code": "B20261127-07", **(line_extra or {}),
            })
        doc: dict[str, Any] = {
            "sale_id": str(uuid.uuid4()),
            "stall_id": self.stall_id,
            "receipt_no": self.receipt_no,
            "sold_at": (sold_at or dt.datetime.now(SHANGHAI)).isoformat(timespec="seconds"),
            "trace_code": make_trace_code(self.region, self.market, stall_number(self.stall_id),
                                          self.receipt_no),
            "lines": out_lines,
            "total_fen": sum(ln["amount_fen"] for ln in out_lines),
            "prev_hash": self.prev,
            "signature": "",
            **(extra or {}),
        }
        if sign:
            doc["signature"] = sign_sale(doc, self.key)
        self.prev = sale_digest(doc)
        return doc


def register_stall(server: LiveServer, sim: StallSim, name: str = "王记鲜果") -> str:
    """Registers ``sim``'s stall and signing key with the manager's token; the stall's token."""
    with server.client(ADMIN) as c:
        r = c.post("/api/v1/stalls", json={"stall_id": sim.stall_id, "name": name,
                                           "public_key": sim.public_key})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])
