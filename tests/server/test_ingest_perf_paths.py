"""The upload path made fast for issue 17, checked for what it must still do (not for speed:
bench/server_bench.py measures that).

* ``server.ingest.prepare``: the digest from the validated model and libsodium's signature
  check give the answers of ``edge.integrity``;
* ``server.groupcommit``: uploads that arrive together share one transaction, each answered
  with its own results, a failed group never blocks the next;
* ``server.live``: the big screen gets the figures after uploads without an upload computing
  them, coalesced, and from another server process on PostgreSQL;
* no query an upload or the live figures run reads every stored sale (the history-size
  slowdown of issue 17).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DataError, IntegrityError

from edge.integrity import public_key_b64, sale_digest, sign_sale, verify_sale
from edge.pricing import check_sale
from edge.sale import Sale
from server import db, ingest
from server.app import create_app
from server.auth import stall_for_token
from server.groupcommit import ConcurrentUpload, GroupCommit
from server.ingest import prepare, signature_ok, store, verify_key
from server.settings import Settings
from tests.conftest import LiveServer, free_port
from tests.server.conftest import ADMIN, SHANGHAI, StallSim, register_stall

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# -- prepare: the same answers as edge.integrity ---------------------------------------------


def _sales_of_every_shape() -> list[dict[str, Any]]:
    sim = StallSim("S01")
    out = [sim.sale([("1001", "西红柿", 512, 300, "500g")]),
           sim.sale([("2", "香蕉", 1000, 690, "kg"), ("3", "黄瓜", 333, 260, "500g")],
                    extra={"vendor": "王记", "rounding": "half-up"}, line_extra={"name_en": "Tomato"})]
    piece = sim.sale([("5003", "老豆腐", 1, 300, "kg")])
    piece["lines"][0].update(weight_g=None, quantity=3, price_unit="piece", amount_fen=900)
    piece["total_fen"] = 900
    out.append(piece)
    odd_time = sim.sale([("1", "香蕉", 100, 690, "kg")])
    odd_time["sold_at"] = "2026-11-28T00:15:02.250Z"  # fractions, Z: the model writes them back
    out.append(odd_time)
    return out


def test_the_digest_of_the_model_is_the_digest_of_the_sale_as_written() -> None:
    """prepare() digests the validated model; sales stored by older code were digested from
    the model's JSON validated again: the same digest, so resent sales stay duplicates."""
    for raw in _sales_of_every_shape():
        model = Sale.model_validate(raw)
        assert sale_digest(model) == sale_digest(model.to_json()) == sale_digest(raw)


def test_the_signature_check_answers_as_edge_integrity() -> None:
    """prepare() checks each signature with libsodium against the digest it computed once;
    edge.integrity.verify_sale (OpenSSL) is the reference."""
    key = Ed25519PrivateKey.generate()
    pub = public_key_b64(key)
    checked = 0
    for raw in _sales_of_every_shape():
        raw["signature"] = sign_sale(raw, key)
        cases = {
            "signed": (pub, raw),
            "unpadded signature and key": (pub.rstrip("="),
                                           {**raw, "signature": raw["signature"].rstrip("=")}),
            "another key": (public_key_b64(Ed25519PrivateKey.generate()), raw),
            "altered sale": (pub, {**raw, "sold_at": "2026-11-28T08:00:00+08:00"}),
            "no signature": (pub, {**raw, "signature": ""}),
            "not base64": (pub, {**raw, "signature": "!!not base64!!"}),
            "short signature": (pub, {**raw, "signature": raw["signature"][:40]}),
            "key of 30 bytes": (pub[:40], raw),
            "no key": ("", raw),
        }
        for name, (public, sale) in cases.items():
            digest = sale_digest(Sale.model_validate(sale))
            vk = verify_key(public)
            got = vk is not None and signature_ok(vk, sale["signature"], digest)
            assert got == verify_sale(sale, public), name
            checked += got
    assert checked == 2 * len(_sales_of_every_shape())  # "signed" and "unpadded" verify


# -- group commit ---------------------------------------------------------------------------


@pytest.fixture
def app_db(db_url: str) -> Iterator[Any]:
    app = create_app(Settings(db_url=db_url, admin_token=ADMIN))
    yield app
    app.state.engine.dispose()
    app.state.write_engine.dispose()


def _register_direct(app: Any, sims: list[StallSim]) -> list[db.Stall]:
    from server.auth import Actor
    from server.stalls import register

    with app.state.sessionmaker() as session:
        tokens = [register(session, Actor("admin", "admin"), s.stall_id, s.stall_id, s.public_key)
                  for s in sims]
        session.commit()
    with app.state.sessionmaker() as session:
        return [stall_for_token(session, HTTPAuthorizationCredentials(scheme="Bearer", credentials=t))
                for t in tokens]


def test_uploads_that_arrive_together_share_one_commit(app_db: Any) -> None:
    """Eight stalls upload while the writer is busy: the first is written alone, the seven
    that queued meanwhile in one transaction, and each gets its own results."""
    sims = [StallSim(f"S0{i + 1}") for i in range(8)]
    stalls = _register_direct(app_db, sims)
    settings: Settings = app_db.state.settings
    lock = threading.Lock()
    group = GroupCommit(app_db.state.sessionmaker, write_lock=lock)
    batches = []
    with app_db.state.sessionmaker() as session:
        for stall, sim in zip(stalls, sims, strict=True):
            sales = [sim.sale([("1001", "西红柿", 500 + k, 300, "500g")]) for k in range(3)]
            batches.append(prepare(session, stall, sales, settings))
    results: dict[str, Any] = {}

    def upload(i: int) -> None:
        results[stalls[i].stall_id] = group.store(stalls[i], batches[i])

    lock.acquire()  # the writer is busy
    first = threading.Thread(target=upload, args=(0,))
    first.start()
    _wait(lambda: group._writing and not group._queue, "the first upload to lead")
    others = [threading.Thread(target=upload, args=(i,)) for i in range(1, 8)]
    for t in others:
        t.start()
    _wait(lambda: len(group._queue) == 7, "seven uploads to queue")
    lock.release()
    for t in [first, *others]:
        t.join(timeout=30)
    assert group.commits == 2 and group.uploads == 8
    for stall, batch in zip(stalls, batches, strict=True):
        mine = results[stall.stall_id]
        assert [r.status for r in mine] == ["accepted"] * 3
        assert [r.sale_id for r in mine] == [p.sale_id for p in batch]  # type: ignore[union-attr]
    with app_db.state.sessionmaker() as session:
        assert session.execute(select(db.Sale.stall_id, db.Sale.receipt_no)
                               .order_by(db.Sale.stall_id, db.Sale.receipt_no)).all() == [
            (s.stall_id, n) for s in stalls for n in (1, 2, 3)]
        per_stall = dict(session.execute(select(db.StallDay.stall_id, db.StallDay.sales)).all())
        assert per_stall == {s.stall_id: 3 for s in stalls}
        tomato = session.execute(select(db.ItemDay.lines, db.ItemDay.weight_g)).one()
        assert tomato == (24, 8 * (500 + 501 + 502))


POSTGRES = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


@POSTGRES
def test_a_group_is_three_statements_on_postgresql(app_db: Any) -> None:
    """On PostgreSQL the writer's floor is round trips: a group of uploads is the look-up, one
    insert of all its sales, and one statement for the lines, the four rollups and the notice
    to the other server processes (the insert and it in one pipeline, one round trip), then the
    commit, whatever the group's size.  Counted as PostgreSQL received them (its own
    ``log_statement``, sent back to this connection as notices).  The second group, of 9
    sales, adds to the rollup rows the first created."""
    sims = [StallSim(f"S0{i + 1}") for i in range(3)]
    stalls = _register_direct(app_db, sims)
    settings: Settings = app_db.state.settings
    received: list[str] = []

    def logged(diag: Any) -> None:
        sql = re.sub(r"^(statement|execute [^:]*): ", "", diag.message_primary or "")
        received.append(sql.lstrip().split(None, 1)[0].upper())

    for round_ in range(2):
        with app_db.state.sessionmaker() as session:
            batches: list[Any] = [(stall, prepare(session, stall, [
                sim.sale([("1001", "西红柿", 500, 300, "500g"), ("2", "香蕉", 1000, 690, "kg")])
                for _ in range(1 + 2 * round_)], settings))
                for stall, sim in zip(stalls, sims, strict=True)]
            session.execute(text("SET LOCAL client_min_messages = 'log'"))
            session.execute(text("SET LOCAL log_statement = 'all'"))
            driver = session.connection().connection.driver_connection
            received.clear()
            driver.add_notice_handler(logged)
            try:
                results = store(session, batches, own_transaction=True, announce="test")
                session.commit()
            finally:
                driver.remove_notice_handler(logged)
        assert received == ["SELECT", "INSERT", "WITH", "COMMIT"], (round_, received)
        assert [r.status for res in results for r in res] == ["accepted"] * (3 + 6 * round_)
    with app_db.state.sessionmaker() as session:
        assert session.execute(select(func.count()).select_from(db.SaleLine)).scalar_one() == 24
        items = dict(session.execute(select(db.ItemDay.plu, db.ItemDay.weight_g)).all())
        assert items == {"1001": 6000, "2": 12000}
        per_stall = dict(session.execute(select(db.StallDay.stall_id, db.StallDay.total_fen)).all())
        assert per_stall == {s.stall_id: 4 * (300 + 690) for s in stalls}
        hours = session.execute(select(func.sum(db.StallHour.sales))).scalar_one()
        assert hours == 12
        mine = session.execute(select(db.StallItemDay.lines).where(
            db.StallItemDay.stall_id == "S01", db.StallItemDay.plu == "2")).scalar_one()
        assert mine == 4


@POSTGRES
def test_an_error_at_the_end_of_a_pipeline_comes_up_as_sqlalchemy_s(app_db: Any) -> None:
    """A group's sales and the statement after them go in one pipeline (``ingest.pg_pipeline``),
    where PostgreSQL's errors arrive at its end, from psycopg.  The group commit retries on
    SQLAlchemy's ``IntegrityError`` (another process stored the same sale meanwhile) and
    ``store`` goes sale by sale on its ``DataError``: they come up as those, and the
    connection works again after the rollback."""
    with app_db.state.engine.connect() as conn:
        for statement, error in (("INSERT INTO once VALUES (1, 'b')", IntegrityError),
                                 ("INSERT INTO once VALUES (2, 'too long')", DataError)):
            conn.execute(text("CREATE TEMPORARY TABLE once (k int PRIMARY KEY, t varchar(2))"))
            conn.execute(text("INSERT INTO once VALUES (1, 'a')"))
            with pytest.raises(error), ingest.pg_pipeline(conn):
                conn.execute(text("INSERT INTO once VALUES (3, 'c')"))
                conn.execute(text(statement))
            conn.rollback()
        with ingest.pg_pipeline(conn):
            conn.execute(text("CREATE TEMPORARY TABLE once (k int PRIMARY KEY)"))
            conn.execute(text("INSERT INTO once VALUES (1)"))
        assert conn.execute(text("SELECT k FROM once")).scalars().all() == [1]
        conn.rollback()


@POSTGRES
def test_sales_sent_as_json_read_back_as_the_rows_they_were(app_db: Any) -> None:
    """On PostgreSQL a group's sales and lines go as JSON texts made where each sale was
    checked (``json_populate_recordset``), not as rows bound by SQLAlchemy: each column reads
    back as the row ``table_rows`` makes for it, as an inserted row does (instants in UTC, the
    market day, the flags and the raw JSON with its backslashes, quotes and Chinese, the
    signature's verdict), and so does each line."""
    sim = StallSim("S01")
    (stall,) = _register_direct(app_db, [sim])
    settings: Settings = app_db.state.settings
    raws = [sim.sale([("2", "香蕉" if i != 5 else "🍅番茄\t", 1000 + i, 690, "kg"),
                      ("3", 'Qing "jiang\\cai', 333, 260, "500g")],
                     sold_at=dt.datetime(2026, 12, 4, 23, 59, 30, tzinfo=SHANGHAI) if i == 1 else None,
                     extra={"vendor": '王记 "老店"\\1'} if i == 2 else None,
                     line_extra={"name_en": "Banana"} if i == 3 else None, sign=i != 4)
            for i in range(8)]
    before = dt.datetime.now(dt.UTC)
    with app_db.state.sessionmaker() as session:
        prepared = [p for p in prepare(session, stall, raws, settings) if isinstance(p, ingest.Prepared)]
        assert all(p.row_json is not None and "raw" not in p.row for p in prepared)  # for PostgreSQL
        # one as checked for SQLite (the rows without their JSON texts): store makes them
        (for_sqlite,) = ingest.check_sales(stall, [raws[6]], settings.model_copy(
            update={"db_url": "sqlite:///unused.db"}), ingest.number_owner(session, stall))
        assert isinstance(for_sqlite, ingest.Prepared) and for_sqlite.row_json is None
        prepared[6] = for_sqlite
        results = store(session, [(stall, list(prepared))], own_transaction=True)
        session.commit()
    assert [r.status for r in results[0]] == ["accepted"] * len(raws), results
    with app_db.state.sessionmaker() as session:
        rows = {row.sale_id: row for row in session.execute(select(db.Sale)).scalars()}
    assert len(rows) == len(prepared) == len(raws)
    for p in prepared:
        want, _ = ingest.table_rows(p, list(p.flags), before)
        got = rows[p.sale_id]
        for column, value in want.items():
            if column == "received_at":
                assert before <= got.received_at <= dt.datetime.now(dt.UTC)
            else:
                assert getattr(got, column) == value, (p.row["receipt_no"], column)
    assert rows[prepared[4].sale_id].flags == ["bad_signature"]
    assert rows[prepared[1].sale_id].local_day == dt.date(2026, 12, 4)
    with app_db.state.sessionmaker() as session:
        lines = {(ln.sale_id, ln.idx): ln for ln in session.execute(select(db.SaleLine)).scalars()}
        raw_text = dict(session.execute(text("SELECT sale_id, raw::text FROM sales")).all())
    assert len(lines) == sum(len(p.lines) for p in prepared)
    for p in prepared:
        for want_line in p.lines:
            got_line = lines[(p.sale_id, want_line["idx"])]
            assert {c: getattr(got_line, c) for c in want_line} == want_line
        # the JSON column's text is the document's json.dumps, as SQLAlchemy's bind writes it
        assert raw_text[p.sale_id] == json.dumps(p.doc)
    assert lines[(prepared[5].sale_id, 0)].name == "🍅番茄\t"


@POSTGRES
def test_the_writer_reads_the_indexes_of_sale_keys_however_much_it_has_grown(app_db: Any) -> None:
    """PostgreSQL keeps one generic plan of a statement run often, and of the foreign-key check
    each stored line fires, made from what it knew of the tables then.  Made while ``sale_keys``
    was small, that plan scans it whole, and went on doing so as it grew, until autovacuum next
    analysed it: a batch of 100 took 5 ms on a new database and 90 ms 12,000 sales later.  The
    group commit's connections plan each statement for the tables as they are."""
    sims = [StallSim("S01")]
    stalls = _register_direct(app_db, sims)
    settings: Settings = app_db.state.settings
    with app_db.state.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")  # autovacuum's first look at a new market: empty tables
    maker = app_db.state.write_sessionmaker

    def write(n: int, notes: list[str] | None = None) -> None:
        with maker() as session:
            if notes is not None:  # every plan the writer's statements run, sent back as notices
                session.connection().connection.dbapi_connection.add_notice_handler(  # type: ignore[union-attr]
                    lambda d: notes.append(d.message_primary or ""))
                session.execute(text("LOAD 'auto_explain'"))
                for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice"):
                    session.execute(text(f"SET LOCAL auto_explain.{setting}"))
            lines = [("1001", "西红柿", 500, 300, "500g"), ("2", "香蕉", 1000, 690, "kg")]
            sales = [sims[0].sale(lines) for _ in range(n)]
            results = store(session, [(stalls[0], prepare(session, stalls[0], sales, settings))],
                            own_transaction=True)
            session.commit()
        assert [r.status for r in results[0]] == ["accepted"] * n

    for _ in range(8):  # more than the five runs after which a generic plan is kept
        write(1)
    for _ in range(6):
        write(400)
    notes: list[str] = []
    write(3, notes)
    keys = [n for n in notes if "sale_keys" in n and "Query Text" in n]
    assert any("Index" in n for n in keys), notes  # the look-up and the lines' key checks
    assert not any("Seq Scan on sale_keys" in n for n in keys), keys


@POSTGRES
def test_the_token_read_outside_a_transaction_leaves_the_pool_as_it_was(app_db: Any) -> None:
    """The stall's token is read on PostgreSQL without BEGIN and ROLLBACK (autocommit); the
    connection goes back to the pool in its usual mode, so the next session is a transaction."""
    from server.auth import Actor, stall_by_token
    from server.stalls import register

    sim = StallSim("S01")
    with app_db.state.sessionmaker() as session:
        token = register(session, Actor("admin", "admin"), "S01", "S01", sim.public_key)
        session.commit()
    engine = app_db.state.engine
    engine.dispose()  # one connection from here on, the one the token read uses
    stall = stall_by_token(engine, HTTPAuthorizationCredentials(scheme="Bearer", credentials=token))
    assert (stall.stall_id, stall.public_key) == ("S01", sim.public_key)
    assert engine.pool.checkedin() == 1
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]
        conn.exec_driver_sql("CREATE TEMP TABLE t (x int)")
        conn.rollback()  # in a transaction: the table is gone with it
        assert conn.exec_driver_sql("SELECT to_regclass('pg_temp.t')").scalar() is None


@POSTGRES
def test_postgresql_refuses_a_value_too_long_for_its_column_and_never_cuts_it(app_db: Any) -> None:
    """The rows go to PostgreSQL as arrays of text: the insert itself refuses a name longer than
    its column (the sale is then refused with the reason), where a cast to varchar(64) would
    have cut it short without a word."""
    day = dt.date(2026, 12, 4)
    for name, refused in (("长" * 64, False), ("长" * 65, True)):
        rollups = ingest._Rollups()
        rollups.items[(day, "1")] = {"local_day": day, "plu": "1", "name": name, "name_en": None,
                                     "lines": 1, "weight_g": 500, "quantity": 0, "amount_fen": 300}
        with app_db.state.sessionmaker() as session:
            if refused:
                with pytest.raises(DataError, match="too long"):
                    ingest._pg_write(session, "[]", rollups)
            else:
                ingest._pg_write(session, "[]", rollups)
                assert session.execute(select(db.ItemDay.name)).scalar_one() == name


def test_a_failed_group_fails_its_uploads_and_the_next_group_is_written(app_db: Any) -> None:
    """A group the database refuses as a whole (here: a sale of a stall the database does
    not know, a foreign key) answers each of its uploads with the error; the uploads
    queued behind it are written next, nothing waits for ever."""
    sims = [StallSim("S01"), StallSim("S02")]
    stalls = _register_direct(app_db, sims)
    settings: Settings = app_db.state.settings
    ghost_sim = StallSim("S09")
    ghost = db.Stall(stall_id="S09", name="ghost", token_sha256="x" * 64, public_key=ghost_sim.public_key,
                     created_at=dt.datetime.now(dt.UTC))
    lock = threading.Lock()
    group = GroupCommit(app_db.state.sessionmaker, write_lock=lock)
    with app_db.state.sessionmaker() as session:
        bad = prepare(session, ghost, [ghost_sim.sale([("1", "香蕉", 100, 690, "kg")])], settings)
        good = [prepare(session, s, [sim.sale([("1", "香蕉", 100, 690, "kg")])], settings)
                for s, sim in zip(stalls, sims, strict=True)]
    outcome: dict[str, Any] = {}

    def upload(name: str, stall: db.Stall, prepared: Any) -> None:
        try:
            outcome[name] = group.store(stall, prepared)
        except Exception as exc:  # noqa: BLE001 - the test looks at what each got
            outcome[name] = exc

    lock.acquire()
    threads = [threading.Thread(target=upload, args=("ghost", ghost, bad))]
    threads[0].start()
    _wait(lambda: group._writing and not group._queue, "the ghost's upload to lead")
    # Queued behind it, written together in the next group.
    threads += [threading.Thread(target=upload, args=(s.stall_id, s, p)) for s, p in zip(stalls, good,
                                                                                         strict=True)]
    for t in threads[1:]:
        t.start()
    _wait(lambda: len(group._queue) == 2, "two uploads to queue")
    lock.release()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    assert isinstance(outcome["ghost"], ConcurrentUpload)
    assert [r.status for r in outcome["S01"]] == ["accepted"]
    assert [r.status for r in outcome["S02"]] == ["accepted"]
    with app_db.state.sessionmaker() as session:
        assert sorted(session.execute(select(db.Sale.stall_id)).scalars()) == ["S01", "S02"]


def _wait(cond: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# -- the live figures ------------------------------------------------------------------------


class Screen:
    """A big screen subscribed to /api/v1/events, collecting its ``sales`` events."""

    def __init__(self, url: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._client = httpx.Client(base_url=url, timeout=httpx.Timeout(5, read=None))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self.ready.wait(10), "no hello event"

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/api/v1/events") as r:
                name = None
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        name = line.split(":", 1)[1].strip()
                        if name == "hello":
                            self.ready.set()
                    elif line.startswith("data:") and name == "sales":
                        self.events.append(json.loads(line.split(":", 1)[1]))
        except httpx.HTTPError:
            pass

    def wait_for_sales(self, n: int, timeout: float = 30.0) -> dict[str, Any]:
        _wait(lambda: bool(self.events) and self.events[-1]["today"]["sales"] >= n,
              f"the screen to show {n} sales", timeout)
        return self.events[-1]

    def close(self) -> None:
        self._client.close()


def _upload(server: LiveServer, token: str, sales: list[dict[str, Any]]) -> dict[str, Any]:
    with server.client(token) as c:
        r = c.post("/api/v1/sales", json={"sales": sales})
    assert r.status_code == 200, r.text
    return dict(r.json())


@SQLITE
def test_the_screen_gets_the_figures_without_an_upload_computing_them(server: LiveServer) -> None:
    sim = StallSim("S01")
    token = register_stall(server, sim)
    live = server.app.state.live
    # No screen: uploads store sales and compute nothing for the screen.
    _upload(server, token, [sim.sale([("1001", "西红柿", 500, 300, "500g")])])
    time.sleep(0.5)
    assert live.published == 0
    screen = Screen(server.url)
    try:
        # One sale after a quiet moment reaches the screen at once, with its figures.
        _upload(server, token, [sim.sale([("1001", "西红柿", 500, 300, "500g")],
                                          line_extra={"name_en": "Tomato"})])
        first = screen.wait_for_sales(2, timeout=5)
        assert first["type"] == "sales" and first["stall_id"] == "S01" and first["new"] == 1
        assert first["today"]["total_fen"] == 600 and first["recent"][0]["items_en"] == ["Tomato"]
        # A burst of uploads: fewer events than uploads, each with the whole figures, and
        # "new" counts every sale stored since the event before.
        for k in range(40):
            _upload(server, token, [sim.sale([("1002", "黄瓜", 100 + k, 250, "500g")])])
        last = screen.wait_for_sales(42)
        assert len(screen.events) < 41
        assert sum(e["new"] for e in screen.events) == 41
        assert last["today"]["sales"] == 42 and len(last["recent"]) == 10
    finally:
        screen.close()


@SQLITE
def test_a_sale_stored_while_the_figures_are_read_is_new_in_the_event_that_shows_it(
        server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event's ``new`` is the sales its figures show that the event before did not: a sale
    committed after the uploads were counted and before the figures were read once showed up
    unmarked, then was marked by an event later (a CI run summed the events' ``new`` one short
    of the sales shown)."""
    sim = StallSim("S01")
    token = register_stall(server, sim)
    live = server.app.state.live
    screen = Screen(server.url)
    try:
        _upload(server, token, [sim.sale([("1001", "西红柿", 500, 300, "500g")])])
        assert screen.wait_for_sales(1, timeout=5)["new"] == 1
        read, late = live.figures, []

        def figures(new: int, stall_id: str | None) -> dict[str, Any]:
            if not late:  # another upload commits between the count and the figures
                late.append(_upload(server, token, [sim.sale([("1002", "黄瓜", 300, 250, "500g")])]))
            return dict(read(new, stall_id))

        monkeypatch.setattr(live, "figures", figures)
        _upload(server, token, [sim.sale([("1001", "西红柿", 700, 300, "500g")])])
        shown = screen.wait_for_sales(3, timeout=5)
        assert late and shown["new"] == 2  # both sales it shows for the first time
        time.sleep(0.6)  # the late upload's own wake-up: nothing new to show, no event
        assert screen.events[-1] is shown and [e["new"] for e in screen.events] == [1, 2]
    finally:
        screen.close()


@pytest.mark.parametrize("reader", ["live", "display"])
def test_the_screens_figures_are_read_from_one_snapshot(server: LiveServer, reader: str) -> None:
    """A sale committed while the big screen's figures are read is in all of them or in none:
    on PostgreSQL (READ COMMITTED, each statement its own snapshot) the recent sales showed a
    sale that today's count, read a statement earlier, did not."""
    from server import display

    sim = StallSim("S01")
    token = register_stall(server, sim)
    _upload(server, token, [sim.sale([("1001", "西红柿", 500, 300, "500g")])])
    app = server.app
    engine = app.state.sessionmaker.kw["bind"]
    me, late = threading.get_ident(), []

    def commit_another(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        # after the read's first statement (SQLite's BEGIN reads nothing: its snapshot is
        # taken at the first read)
        if threading.get_ident() == me and not late and statement.lstrip().upper().startswith("SELECT"):
            late.append(_upload(server, token, [sim.sale([("1002", "黄瓜", 300, 250, "500g")])]))

    def read() -> dict[str, Any]:
        if reader == "live":
            return dict(app.state.live.figures(0, None))
        with app.state.read_sessionmaker() as session:
            return dict(display.figures(session, "test", app.state.settings.tz))

    event.listen(engine, "after_cursor_execute", commit_another)
    try:
        seen = read()
    finally:
        event.remove(engine, "after_cursor_execute", commit_another)
    assert late, "the second sale was not committed during the read"
    assert (seen["today"]["sales"], len(seen["recent"])) == (1, 1)
    again = read()
    assert (again["today"]["sales"], len(again["recent"])) == (2, 2)


@pytest.mark.postgres
def test_a_screen_on_another_server_process_sees_the_upload(postgres_url: str) -> None:
    """Two servers on one PostgreSQL database, as ``wetmarket server --workers 2`` runs them:
    a screen connected to one sees the sales uploaded to the other (LISTEN/NOTIFY)."""
    from tests.server.conftest import reset_postgres

    reset_postgres(postgres_url)
    a = create_app(Settings(db_url=postgres_url, admin_token=ADMIN))
    b = create_app(Settings(db_url=postgres_url, admin_token=ADMIN))
    with LiveServer(a) as srv_a, LiveServer(b) as srv_b:
        sim = StallSim("S01")
        token = register_stall(srv_a, sim)
        screen = Screen(srv_b.url)
        try:
            _upload(srv_a, token, [sim.sale([("1001", "西红柿", 500, 300, "500g")])])
            got = screen.wait_for_sales(1, timeout=10)
            assert got["stall_id"] == "S01" and got["new"] == 1
            assert got["today"]["ranking"][0]["stall_id"] == "S01"
        finally:
            screen.close()
        # counted once the broker took the event: the screen can read it before the count moves
        _wait(lambda: b.state.live.published >= 1, "server b to count the event it published", 5)


# -- server processes ------------------------------------------------------------------------


def _wetmarket() -> str:
    return str(Path(sys.executable).parent / "wetmarket")


def test_an_sqlite_database_takes_one_server_process(tmp_path: Path) -> None:
    r = subprocess.run([_wetmarket(), "server", "--db", f"sqlite:///{tmp_path / 'market.db'}",
                        "--workers", "2", "--port", str(free_port())],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "an SQLite database takes one server process" in r.stderr, r.stderr


@pytest.mark.postgres
def test_several_server_processes_on_postgresql(postgres_url: str) -> None:
    """``wetmarket server --workers 2``: two processes under one port take uploads; every
    sale is stored once and counted."""
    from tests.server.conftest import reset_postgres

    reset_postgres(postgres_url)
    port = free_port()
    proc = subprocess.Popen([_wetmarket(), "server", "--db", postgres_url, "--workers", "2",
                             "--port", str(port)], env={**os.environ, "WETMARKET_ADMIN_TOKEN": ADMIN},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _answers(url) or proc.poll() is not None, "the server to start", 120)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        _wait(lambda: len(children(proc.pid)) >= 2, "two worker processes", 60)
        # several processes already check side by side: no check processes of their own
        assert httpx.get(f"{url}/healthz").json()["checks"] == "off"
        sims = [StallSim(f"S0{i + 1}") for i in range(4)]
        tokens = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
            for sim in sims:
                r = c.post("/api/v1/stalls", json={"stall_id": sim.stall_id, "name": sim.stall_id,
                                                   "public_key": sim.public_key})
                assert r.status_code == 201, r.text
                tokens.append(r.json()["token"])
        accepted = 0
        for k in range(5):
            for sim, token in zip(sims, tokens, strict=True):
                # A new connection each time: the kernel hands them to either process.
                r = httpx.post(f"{url}/api/v1/sales", headers={"Authorization": f"Bearer {token}"},
                               json={"sales": [sim.sale([("1001", "西红柿", 400 + k, 300, "500g")])]})
                assert r.status_code == 200, r.text
                accepted += r.json()["accepted"]
        assert accepted == 20
        assert httpx.get(f"{url}/api/v1/stats/today").json()["sales"] == 20
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


# -- no query reads the whole history -------------------------------------------------------


def _history_gen() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "history_gen.py"
    spec = importlib.util.spec_from_file_location("history_gen", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["history_gen"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


#: A plan line that reads a table of the history whole: a scan, unless it is the ordered
#: scan of the received_at index that stops after the last 10 sales.
_FULL_READ = re.compile(r"\bSCAN (sales|sale_lines)\b(?! USING INDEX ix_sales_received_at)")


@SQLITE
def test_no_query_of_an_upload_or_of_the_screen_reads_the_whole_history(db_url: str, tmp_path: Path) -> None:
    """Issue 17: single-sale uploads got slower as sales were stored (123/s empty, 59/s at
    30,000).  Every statement an upload and the screen's figures run is looked at with
    SQLite's EXPLAIN QUERY PLAN: none may scan the sales or their lines."""
    gen = _history_gen()
    gen.generate(db_url, gen.Plan(sales=3000, stalls=12, days=20), state=tmp_path / "state.json")
    state = json.loads((tmp_path / "state.json").read_text())
    app = create_app(Settings(db_url=db_url, admin_token=ADMIN))
    statements: list[tuple[str, Any]] = []

    @event.listens_for(app.state.engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")):
            statements.append((statement, parameters[0] if many else parameters))

    with LiveServer(app) as srv:
        screen = Screen(srv.url)
        try:
            stall = _continue(state["S001"], "S001")
            _upload(srv, state["S001"]["token"], [stall.sale([("1001", "西红柿", 500, 300, "500g")])])
            screen.wait_for_sales(1)
        finally:
            screen.close()
    kinds = {s.split()[0].upper() for s, _ in statements}
    assert {"SELECT", "INSERT"} <= kinds
    assert any("FROM sales" in s and "ORDER BY sales.received_at" in s for s, _ in statements)
    with app.state.engine.connect() as conn:
        for statement, params in statements:
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
            lines = [str(row[-1]) for row in plan]
            assert not any(_FULL_READ.search(line) for line in lines), (statement, lines)
    app.state.engine.dispose()


def _continue(state: dict[str, Any], stall_id: str) -> StallSim:
    """A StallSim going on with a generated stall's chain (its key, its last receipt)."""
    import base64

    sim = StallSim(stall_id)
    sim.key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(state["private_key"]))
    sim.public_key = public_key_b64(sim.key)
    sim.receipt_no, sim.prev = state["receipt_no"], state["prev_hash"]
    return sim


# -- the synthetic history -------------------------------------------------------------------


def test_the_generated_history_is_what_ingest_would_have_stored(db_url: str, tmp_path: Path) -> None:
    """bench/history_gen.py: every sale validates for this market, is priced, chained per
    stall and signed by its stall's registered key, its digest is edge's; the rollups are
    the sums of the sales and lines; a stall goes on from the state file without a flag."""
    gen = _history_gen()
    # "now" at 20:30 yesterday, market time: run between midnight and the first market hour, a
    # plan ending now has no sales on its last day (the test failed from 16:00 to 22:00 UTC)
    now = (dt.datetime.now(SHANGHAI) - dt.timedelta(days=1)).replace(hour=20, minute=30)
    plan = gen.Plan(sales=2500, stalls=15, days=12, now=now.astimezone(dt.UTC))
    gen.generate(db_url, plan, state=tmp_path / "state.json")
    settings = Settings(db_url=db_url, admin_token=ADMIN)
    app = create_app(settings)
    with app.state.sessionmaker() as session:
        keys = dict(session.execute(select(db.Stall.stall_id, db.Stall.public_key)).all())
        assert len(keys) == 15
        sales = session.execute(select(db.Sale).order_by(db.Sale.stall_id, db.Sale.receipt_no)
                                ).scalars().all()
        assert len(sales) == 2500
        prev: dict[str, str] = {}
        sums = _Sums()
        for row in sales:
            model = Sale.model_validate(row.raw, context=settings.sale_context(row.stall_id))
            check_sale(model)
            assert row.digest == sale_digest(row.raw)
            assert verify_sale(row.raw, keys[row.stall_id]) and row.verified and row.flags == []
            assert row.prev_hash == prev.get(row.stall_id, "0" * 64)
            prev[row.stall_id] = row.digest
            local = model.sold_at.astimezone(settings.tz)
            assert row.sold_at == model.sold_at and row.local_day == local.date()
            assert row.received_at > row.sold_at and row.total_fen == model.total_fen
            assert [(ln.plu, ln.name, ln.weight_g, ln.quantity, ln.unit_price_fen, ln.price_unit,
                     ln.amount_fen, ln.batch_code) for ln in row.lines] == [
                (ln.plu, ln.name, ln.weight_g, ln.quantity, ln.unit_price_fen, ln.price_unit,
                 ln.amount_fen, ln.batch_code) for ln in model.lines]
            sums.add(row.stall_id, local, model)
        days = {s.local_day for s in sales}
        assert len(days) == 12 and max(days) <= dt.datetime.now(SHANGHAI).date()
        assert {h for (_, h, _) in sums.hours} <= set(range(6, 20))
        assert sums.hours == {(r.local_day, r.hour, r.stall_id): (r.sales, r.total_fen)
                              for r in session.execute(select(db.StallHour)).scalars()}
        assert sums.days == {(r.local_day, r.stall_id): (r.sales, r.total_fen)
                             for r in session.execute(select(db.StallDay)).scalars()}
        assert sums.items == {(r.local_day, r.plu): (r.name, r.name_en, r.lines, r.weight_g, r.quantity,
                                                     r.amount_fen)
                              for r in session.execute(select(db.ItemDay)).scalars()}
        assert sums.stall_items == {(r.local_day, r.stall_id, r.plu): (r.lines, r.weight_g, r.quantity,
                                                                       r.amount_fen)
                                    for r in session.execute(select(db.StallItemDay)).scalars()}
    state = json.loads((tmp_path / "state.json").read_text())
    with LiveServer(app) as srv:
        sim = _continue(state["S003"], "S003")
        body = _upload(srv, state["S003"]["token"], [sim.sale([("1001", "西红柿", 500, 300, "500g")])])
    assert body["results"][0]["status"] == "accepted" and body["results"][0]["flags"] == []


class _Sums:
    """The rollups, summed again from the sales as stored."""

    def __init__(self) -> None:
        self.hours: dict[tuple[dt.date, int, str], tuple[int, int]] = {}
        self.days: dict[tuple[dt.date, str], tuple[int, int]] = {}
        self.items: dict[tuple[dt.date, str], tuple[Any, ...]] = {}
        self.stall_items: dict[tuple[dt.date, str, str], tuple[int, ...]] = {}

    def add(self, stall_id: str, local: dt.datetime, sale: Sale) -> None:
        day = local.date()
        for key, table in (((day, local.hour, stall_id), self.hours), ((day, stall_id), self.days)):
            n, total = table.get(key, (0, 0))
            table[key] = (n + 1, total + sale.total_fen)  # type: ignore[index]
        for ln in sale.lines:
            w, q = ln.weight_g or 0, ln.quantity or 0
            _, _, lines, weight, qty, amount = self.items.get((day, ln.plu), (None, None, 0, 0, 0, 0))
            self.items[(day, ln.plu)] = (ln.name, (ln.model_extra or {}).get("name_en"), lines + 1,
                                         weight + w, qty + q, amount + ln.amount_fen)
            lines, weight, qty, amount = self.stall_items.get((day, stall_id, ln.plu), (0, 0, 0, 0))
            self.stall_items[(day, stall_id, ln.plu)] = (lines + 1, weight + w, qty + q,
                                                         amount + ln.amount_fen)
