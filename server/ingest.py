"""Sale ingest: idempotent by ``sale_id``, verified, folded into rollups.

A sale whose signature or chain does not verify is still stored, with flags:
the market must see a forged or broken receipt, not lose it.  Only a sale
that is not a sale at all (bad shape, wrong stall, wrong prices) is refused.

A sale is checked by the same ``edge.sale.Sale`` model the stalls journal with,
given this market (region, market number) and the posting stall as validation
context: a trace code of another market or stall is refused before it can take
the unique slot that belongs to that stall's genuine receipt.  Each sale stands
alone: one refused, for whatever reason, never blocks the others of its batch.

Ingest is two steps, so that a server can run the costly one in parallel and store
many uploads in one transaction (``server.groupcommit``):

* ``prepare`` needs no lock and writes nothing: it validates each sale, prices it
  again, computes its digest once (from the validated model), checks its
  signature against that digest and makes the rows it is stored as;
* ``store`` writes the prepared sales of one or many stalls with a fixed number of
  statements whatever their number: one look-up (known sale ids, trace codes and
  the previous receipts' digests, a UNION of three indexed look-ups), one bulk
  insert of sales and one of lines, and one upsert per rollup table (on PostgreSQL the
  lines and upserts in one statement, the rows as JSON texts made by ``prepare``) with the rows
  summed in Python first and sorted by key, so that concurrent writers on
  PostgreSQL take the rollup rows' locks in one order and cannot deadlock.  The
  statements are built once per process, not per upload.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import uuid
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Literal, Protocol, cast

import psycopg
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pydantic import ValidationError
from sqlalchemy import (
    Connection,
    Integer,
    String,
    Table,
    Text,
    any_,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    text,
    union_all,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.orm import Session

from edge import EdgeError
from edge.integrity import sale_digest
from edge.pricing import check_sale
from edge.sale import Sale as SaleModel
from edge.sale import SaleLine as SaleLineModel
from edge.tracecode import stall_id_aliases, stall_number
from server import alerts, db, orders, partitions
from server.settings import Settings

logger = logging.getLogger(__name__)

Outcome = Literal["accepted", "duplicate", "refused"]

#: PostgreSQL's channel for "sales were stored": every server process on the same database
#: listens (``server.live``), so a big screen connected to any of them sees every upload.
SALES_CHANNEL = "wetmarket_sales"


class StallLike(Protocol):
    """What ingest reads of the posting stall: a ``db.Stall`` or the guard's
    ``server.auth.StallAuth``."""

    @property
    def stall_id(self) -> str: ...

    @property
    def public_key(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class IngestResult:
    sale_id: str | None
    status: Outcome
    reason: str | None = None
    flags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"sale_id": self.sale_id, "status": self.status, "reason": self.reason,
                "flags": list(self.flags)}


def _validation_reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "sale"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _raw_id(raw: Any) -> str | None:
    sid = raw.get("sale_id") if isinstance(raw, dict) else None
    return sid if isinstance(sid, str) else None


def validate(stall: StallLike, raw: Any, settings: Settings,
             number_owner: str | None) -> SaleModel | IngestResult:
    """One sale's legal checks (what ``prepare`` runs before the digest and signature): the
    sale as the model reads it, or the refusal to answer with."""
    if number_owner is not None and number_owner != stall.stall_id:
        return IngestResult(_raw_id(raw), "refused",
                            f"stall {stall.stall_id} has the trace-code stall number of {number_owner}, "
                            "registered first; the market manager must give it a number of its own")
    try:
        # The posting stall and this market are checked inside the model, the same
        # checks a stall runs before it journals the sale (edge.sale.SaleContext).
        sale = SaleModel.model_validate(raw, context=settings.sale_context(stall.stall_id))
    except ValidationError as exc:
        return IngestResult(_raw_id(raw), "refused", _validation_reason(exc))
    # A stall on the shopper-friendly rule says so in the sale ("rounding"); both
    # rules are legal, and an unknown one is refused by check_sale itself.
    rule = getattr(sale, "rounding", None) or "half-up"
    try:
        check_sale(sale, rule=str(rule))
    except EdgeError as exc:
        return IngestResult(str(sale.sale_id), "refused", str(exc))
    return sale


#: Each database's known owners of trace-code numbers, per posting stall.  The owner is the
#: first registered of the ids that share a number and stalls are never deleted, so once
#: found it never changes: each process asks once per stall, not once per upload.
_OWNERS: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def number_owner(session: Session, stall: StallLike) -> str | None:
    """The stall that owns the posting stall's trace-code number: the first registered of
    the ids that share it (S1, S01, S001...), so a later alias can never take its codes."""
    bind = session.get_bind()
    known = _OWNERS.setdefault(bind, {})
    owner = known.get(stall.stall_id)
    if owner is not None:
        return owner
    try:
        aliases = stall_id_aliases(stall_number(stall.stall_id))
    except EdgeError:
        return None  # no number at all: each sale is refused by the model, with the reason
    rows = session.execute(select(db.Stall.stall_id).where(db.Stall.stall_id.in_(aliases))
                           .order_by(db.Stall.created_at, db.Stall.stall_id).limit(1)).all()
    if not rows:
        return None
    known[stall.stall_id] = str(rows[0][0])
    return known[stall.stall_id]


#: Upsert statements by (dialect, table, columns): built once, not per upload.
_UPSERTS: dict[tuple[str, str, tuple[str, ...]], Any] = {}


def _upsert_sum(conn: Connection, table: Table, keys: tuple[str, ...],
                rows: list[dict[str, Any]], sums: tuple[str, ...]) -> None:
    """Add the ``sums`` columns of ``rows`` to existing rows, or create them (one statement).

    Rows go in key order: two PostgreSQL transactions that touch the same rows (two stalls
    selling tomatoes today) then lock them in the same order, and one waits for the other
    instead of both deadlocking."""
    if not rows:
        return
    rows.sort(key=itemgetter(*keys))
    dialect = conn.dialect.name
    columns = tuple(rows[0])
    stmt = _UPSERTS.get((dialect, table.name, columns))
    if stmt is None:
        ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(table)
        update = {c: table.c[c] + ins.excluded[c] for c in sums}
        update.update({c: ins.excluded[c] for c in _replaced(columns, keys, sums)})
        stmt = _UPSERTS[(dialect, table.name, columns)] = ins.on_conflict_do_update(
            index_elements=list(keys), set_=update)
    conn.execute(stmt, rows)


def _replaced(columns: Iterable[str], keys: tuple[str, ...], sums: tuple[str, ...]) -> list[str]:
    """The columns an upsert sets to the new row's value: neither the key nor a sum (an item's
    name as the latest sale wrote it)."""
    return [c for c in columns if c not in keys and c not in sums]


def _table(model: type[db.Base]) -> Table:
    return cast(Table, model.__table__)


def ingest_batch(session: Session, stall: StallLike, raws: list[Any],
                 settings: Settings) -> list[IngestResult]:
    """Validate, verify and store a stall's batch; the caller commits (``prepare`` then
    ``store``)."""
    return store(session, [(stall, prepare(session, stall, raws, settings))])[0]


@dataclass(slots=True)
class Prepared:
    """A valid sale, checked, as the rows it is stored as: what ``store`` needs of it, made
    where it was checked (for a batch, a check process: ``server.checkpool``).

    The server's one writer is the serial stage of an upload, and it waits for the
    interpreter's lock that the server's other threads hold; it builds no model and no row
    of a sale here, and the server rebuilds no model from a check process's answer
    (``docs/benchmarks.md``).  Sent as plain dicts and tuples, a sale pickles in a few
    microseconds each way."""

    sale_id: str
    digest: str
    local: dt.datetime
    #: What the signature check found: ``no_stall_key``, ``bad_signature`` or nothing.
    flags: tuple[str, ...]
    #: The ``sales`` row but for what storing decides (``verified``, ``flags``, ``received_at``);
    #: ``raw``, the sale's JSON document (``Sale.to_json``), is left out where ``row_json``
    #: holds it (``doc`` reads it either way).
    row: dict[str, Any]
    #: The ``sale_lines`` rows.
    lines: list[dict[str, Any]]
    #: Each line's English name as the rollups keep it (at most 64 characters), or None.
    names_en: tuple[str | None, ...]
    #: The online order the sale fulfils (``server.orders``), or None.
    order_id: int | None
    #: PostgreSQL: the ``sales`` row as a JSON object without its closing brace (the writer adds
    #: ``verified`` and ``flags``), and the ``sale_lines`` rows as JSON objects separated by
    #: commas, for ``json_populate_recordset`` (``_store``); None where the database is SQLite,
    #: which stores the dicts (made by ``_store`` if a PostgreSQL writer gets such a sale).
    row_json: str | None = None
    lines_json: str | None = None

    @property
    def doc(self) -> dict[str, Any]:
        """The sale's JSON document (``Sale.to_json``): in ``row``, or for PostgreSQL only in
        ``row_json`` (read back from it for the rare sale stored one by one or fulfilling an
        order)."""
        raw = self.row.get("raw")
        if raw is None:
            assert self.row_json is not None, "a prepared sale has its document in one of them"
            raw = self.row["raw"] = json.loads(self.row_json + "}")["raw"]
        return cast(dict[str, Any], raw)

    def model(self) -> SaleModel:
        """The sale's model, rebuilt from its document without validating it again (it was
        validated where it was checked): for the rare sale that fulfils an order."""
        doc = self.doc
        fields = dict(doc)
        fields["sale_id"] = uuid.UUID(doc["sale_id"])
        fields["sold_at"] = dt.datetime.fromisoformat(doc["sold_at"])
        fields["lines"] = [SaleLineModel.model_construct(**ln) for ln in doc["lines"]]
        return SaleModel.model_construct(**fields)


def as_prepared(sale: SaleModel, doc: dict[str, Any], digest: str, local: dt.datetime,
                flags: tuple[str, ...], *, json_texts: bool = False) -> Prepared:
    """A checked sale (its ``Sale.to_json`` document, digest, market time and signature
    flags) as the rows it is stored as; ``json_texts``: with their JSON texts too (PostgreSQL)."""
    sale_id = str(sale.sale_id)
    row = {
        "sale_id": sale_id, "stall_id": sale.stall_id, "receipt_no": sale.receipt_no,
        "trace_code": sale.trace_code, "sold_at": sale.sold_at, "local_day": local.date(),
        "total_fen": sale.total_fen, "digest": digest, "prev_hash": sale.prev_hash,
        "signature": sale.signature, "raw": doc,
    }
    lines = [{
        "sale_id": sale_id, "idx": i, "plu": ln.plu, "name": ln.name, "weight_g": ln.weight_g,
        "quantity": ln.quantity, "unit_price_fen": ln.unit_price_fen,
        "price_unit": ln.price_unit, "amount_fen": ln.amount_fen, "batch_code": ln.batch_code,
    } for i, ln in enumerate(sale.lines)]
    names_en = tuple(n[:64] if isinstance(n := (ln.model_extra or {}).get("name_en"), str) and n else None
                     for ln in sale.lines)
    p = Prepared(sale_id, digest, local, flags, row, lines, names_en, orders.order_id_of(sale))
    if json_texts:
        # Made here, where the sale is checked (for a batch, in a check process), so that the
        # writer only joins them.  SQLite stores the dicts: there they would cost the check
        # process about 15 us a sale for nothing.
        p.row_json, p.lines_json = _json_texts(row, lines)
        # The document is in the text now: sent twice, it doubled what a check process's
        # answer costs to pickle and to read back.
        del row["raw"]
    return p


def _json_texts(row: dict[str, Any], lines: list[dict[str, Any]]) -> tuple[str, str]:
    """``Prepared.row_json`` and ``lines_json`` of these rows.  ``raw`` is the document's
    ``json.dumps``, as the JSON column's own bind writes it; PostgreSQL keeps a nested JSON
    value's text as it is."""
    row_json = json.dumps({**row, "sold_at": row["sold_at"].isoformat(),
                           "local_day": row["local_day"].isoformat()})[:-1]
    return row_json, ",".join(json.dumps(ln) for ln in lines)


def prepare(session: Session, stall: StallLike, raws: list[Any],
            settings: Settings) -> list[Prepared | IngestResult]:
    """Each sale of a stall's batch checked and verified, or refused with the reason, in
    the batch's order.  Reads at most the stall's trace-code number owner, writes nothing."""
    return check_sales(stall, raws, settings, number_owner(session, stall))


def check_sales(stall: StallLike, raws: list[Any], settings: Settings,
                owner: str | None) -> list[Prepared | IngestResult]:
    """``prepare`` past its one read, the owner of the stall's trace-code number: reads no
    database, so it may run in another process (``server.checkpool``)."""
    out: list[Prepared | IngestResult] = []
    key = verify_key(stall.public_key)
    json_texts = not settings.db_url.startswith("sqlite")
    for raw in raws:
        sale = validate(stall, raw, settings, owner)
        if isinstance(sale, IngestResult):
            out.append(sale)
            continue
        sale_id = str(sale.sale_id)
        try:
            doc = sale.to_json()
            # From the validated model: the digest of the sale as the stall wrote it
            # (edge.integrity), without validating the dict once more.
            digest = sale_digest(sale)
            if key is None:
                flags: tuple[str, ...] = ("no_stall_key",)
            elif not signature_ok(key, sale.signature, digest):
                flags = ("bad_signature",)
            else:
                flags = ()
            prepared = as_prepared(sale, doc, digest, sale.sold_at.astimezone(settings.tz), flags,
                                   json_texts=json_texts)
        except Exception as exc:  # noqa: BLE001 - one sale's failure must not block the batch
            # A valid Sale should never get here; if one does, it is refused with the
            # reason (and logged for us) instead of failing the stall's upload for ever.
            logger.exception("sale %s of stall %s cannot be prepared", sale_id, stall.stall_id)
            out.append(IngestResult(sale_id, "refused", f"cannot store this sale: {exc}"))
            continue
        out.append(prepared)
    return out


def _b64decode(text: str) -> bytes:
    """Urlsafe base64 with or without its padding, as ``edge.integrity`` writes and reads it."""
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode("ascii"))


def verify_key(public_key: str | None) -> VerifyKey | None:
    """The stall's Ed25519 key, or None when it has none; a key that cannot be read verifies
    nothing (the stall registered it, so each of its sales is flagged, not refused)."""
    if not public_key:
        return None
    try:
        return VerifyKey(_b64decode(public_key))
    except (ValueError, TypeError, binascii.Error):
        return _NO_KEY


#: Stands for a stored key that is not an Ed25519 key: no signature verifies under it.
_NO_KEY = VerifyKey(bytes(32))


def signature_ok(key: VerifyKey, signature: str, digest: str) -> bool:
    """Ed25519 (``edge.integrity``: the signature is over the 32 raw bytes of the digest),
    checked by libsodium, against the digest ``prepare`` computed once; never raises.

    libsodium verifies in about half the time of OpenSSL here (68 against 136 us a sale),
    and refuses what RFC 8032 lets a verifier refuse (keys and points of small order), so
    it is at least as strict as ``edge.integrity.verify_sale``."""
    if not signature or key is _NO_KEY:
        return False
    try:
        key.verify(bytes.fromhex(digest), _b64decode(signature))
    except (BadSignatureError, ValueError, TypeError, binascii.Error):
        return False
    return True


def store(session: Session, batches: list[tuple[StallLike, list[Prepared | IngestResult]]], *,
          own_transaction: bool = False, announce: str | None = None) -> list[list[IngestResult]]:
    """Store prepared batches of one or many stalls; each batch's results, in order.  The
    caller commits.

    Each sale stands alone: one that fails validation, conversion or its own insert
    is refused with the reason, and the others are stored.  The batches are first
    inserted in bulk; only when the database refuses a row (PostgreSQL refuses,
    say, a NUL character in a text column) are they stored again sale by sale, each in
    its own savepoint.  A database that fails as a whole (connection, disk) is no
    sale's fault: that error goes up and the stall sends again later.

    ``announce``: on PostgreSQL, NOTIFY ``SALES_CHANNEL`` with what was stored, per stall,
    this server named ``announce`` as its origin (``server.live``: every server process's
    big screens see every upload); the notice leaves with the commit.

    ``own_transaction``: the session's transaction holds nothing else (a group commit),
    so a refused bulk insert rolls it all back instead of a savepoint around the bulk.
    """
    def refused(exc: DataError) -> None:
        logger.warning("stalls %s: the database refused a row (%s); storing sale by sale",
                       ", ".join(sorted({s.stall_id for s, _ in batches})), _db_reason(exc))

    if own_transaction:
        try:
            return _store(session, batches, one_by_one=False, announce=announce)
        except DataError as exc:
            refused(exc)
            session.rollback()
        return _store(session, batches, one_by_one=True, announce=announce)
    try:
        with session.begin_nested():
            return _store(session, batches, one_by_one=False, announce=announce)
    except DataError as exc:
        refused(exc)
    with session.begin_nested():
        return _store(session, batches, one_by_one=True, announce=announce)


def _db_reason(exc: DBAPIError) -> str:
    lines = str(exc.orig).strip().splitlines()
    return lines[0] if lines else type(exc.orig).__name__


@dataclass(slots=True)
class _Rollups:
    """The stored sales summed per (day, hour, stall), per (day, item) and per (day, stall,
    item); each stall's day totals are the sums of its hours."""

    hours: dict[tuple[dt.date, int, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0]))
    items: dict[tuple[dt.date, str], dict[str, Any]] = field(default_factory=dict)
    stall_items: dict[tuple[dt.date, str, str], dict[str, Any]] = field(default_factory=dict)

    def add(self, p: Prepared) -> None:
        day, stall_id = p.local.date(), p.row["stall_id"]
        for ln, name_en in zip(p.lines, p.names_en, strict=True):
            plu = ln["plu"]
            item = self.items.get((day, plu))
            if item is None:
                item = self.items[(day, plu)] = {"local_day": day, "plu": plu, "lines": 0,
                                                 "weight_g": 0, "quantity": 0, "amount_fen": 0}
            item["name"] = ln["name"]
            item["name_en"] = name_en
            item["lines"] += 1
            item["weight_g"] += ln["weight_g"] or 0
            item["quantity"] += ln["quantity"] or 0
            item["amount_fen"] += ln["amount_fen"]
            mine = self.stall_items.get((day, stall_id, plu))
            if mine is None:
                mine = self.stall_items[(day, stall_id, plu)] = {
                    "local_day": day, "stall_id": stall_id, "plu": plu, "lines": 0,
                    "weight_g": 0, "quantity": 0, "amount_fen": 0}
            mine["lines"] += 1
            mine["weight_g"] += ln["weight_g"] or 0
            mine["quantity"] += ln["quantity"] or 0
            mine["amount_fen"] += ln["amount_fen"]
        hour = self.hours[(day, p.local.hour, stall_id)]
        hour[0] += 1
        hour[1] += p.row["total_fen"]

    def tables(self) -> list[tuple[_Sum, list[dict[str, Any]]]]:
        """Each rollup table's rows to add, in the fixed order every writer takes them."""
        days: dict[tuple[dt.date, str], list[int]] = defaultdict(lambda: [0, 0])
        for (d, _, s), (n, t) in self.hours.items():
            days[(d, s)][0] += n
            days[(d, s)][1] += t
        return [
            (_HOURS, [{"local_day": d, "hour": h, "stall_id": s, "sales": n, "total_fen": t}
                      for (d, h, s), (n, t) in self.hours.items()]),
            (_DAYS, [{"local_day": d, "stall_id": s, "sales": n, "total_fen": t}
                     for (d, s), (n, t) in days.items()]),
            (_ITEMS, list(self.items.values())),
            (_STALL_ITEMS, list(self.stall_items.values())),
        ]

    def apply(self, conn: Connection) -> None:
        for (table, keys, sums), rows in self.tables():
            _upsert_sum(conn, table, keys, rows, sums)


#: A rollup table, its key columns and the columns an upload adds to.
_Sum = tuple[Table, tuple[str, ...], tuple[str, ...]]
_LINE_SUMS = ("lines", "weight_g", "quantity", "amount_fen")
_HOURS: _Sum = (_table(db.StallHour), ("local_day", "hour", "stall_id"), ("sales", "total_fen"))
_DAYS: _Sum = (_table(db.StallDay), ("local_day", "stall_id"), ("sales", "total_fen"))
_ITEMS: _Sum = (_table(db.ItemDay), ("local_day", "plu"), _LINE_SUMS)
_STALL_ITEMS: _Sum = (_table(db.StallItemDay), ("local_day", "stall_id", "plu"), _LINE_SUMS)


_PG = postgresql.dialect()


def _pg_array_type(column: Any) -> str:
    """The array type a column's values are bound as.  Strings go as ``text[]``: an explicit
    cast to ``varchar(n)`` would cut a long value short, where the insert's own assignment
    refuses it (a DataError, so the sale is refused with the reason, as on SQLite)."""
    if isinstance(column.type, String):
        return "text[]"
    return f"{column.type.compile(dialect=_PG)}[]"


def _pg_unnest(table: Table, prefix: str) -> str:
    q = _PG.identifier_preparer.quote
    cols = ", ".join(q(c.name) for c in table.columns)
    arrays = ", ".join(f"CAST(:{prefix}{c.name} AS {_pg_array_type(c)})" for c in table.columns)
    return f"INSERT INTO {q(table.name)} ({cols}) SELECT * FROM unnest({arrays})"


def _pg_upsert(spec: _Sum, prefix: str) -> str:
    table, keys, sums = spec
    q = _PG.identifier_preparer.quote
    name = q(table.name)
    sets = [f"{q(c)} = {name}.{q(c)} + excluded.{q(c)}" for c in sums]
    sets += [f"{q(c)} = excluded.{q(c)}" for c in _replaced(table.columns.keys(), keys, sums)]
    return (f"{_pg_unnest(table, prefix)} ON CONFLICT ({', '.join(q(k) for k in keys)}) "
            f"DO UPDATE SET {', '.join(sets)}")


def _pg_from_json(table: Table, param: str, replace: dict[str, str] | None = None) -> str:
    """``INSERT INTO table`` the rows of the JSON array bound as ``param``, one object per row
    (``json_populate_recordset``: each value read by its column's own type, so a value too
    long for its column is refused as an insert refuses it); ``replace``: a column's value
    from an expression instead."""
    q = _PG.identifier_preparer.quote
    cols = [c.name for c in table.columns]
    values = ", ".join((replace or {}).get(c, f"r.{q(c)}") for c in cols)
    return (f"INSERT INTO {q(table.name)} ({', '.join(q(c) for c in cols)}) SELECT {values} "
            f"FROM json_populate_recordset(CAST(NULL AS {q(table.name)}), CAST(:{param} AS json)) AS r")


#: PostgreSQL: a group's sales, bound as one JSON array, the rows' text made where each sale
#: was checked (``Prepared.row_json``).  A ``COPY`` of them, formatted here row by row, and
#: the lines bound as arrays, had the writer hold the interpreter's lock for half of the
#: server's samples, which the server's other threads then waited for; and a copy costs two
#: round trips and cannot go in a pipeline (``docs/benchmarks.md``).
_PG_SALES = text(_pg_from_json(_table(db.Sale), "sales",
                               {"received_at": "CAST(:received_at AS timestamp with time zone)"}))

#: PostgreSQL: the lines and the four rollup upserts of a group in one statement (data-modifying
#: CTEs), the lines as one JSON array, each rollup table's rows as one array per column.  The
#: writer's floor there is round trips, not work: five statements cost five of them.  The
#: sales themselves stay a statement of their own, before this one (in the same pipeline), so
#: that their trigger has filled ``sale_keys`` when the lines' references to it are checked.
#: The CTEs run in the one order of this text, so concurrent writers still take the rollup
#: rows' locks in one order (``_upsert_sum``).
_PG_SPECS: list[tuple[str, _Sum]] = [("h_", _HOURS), ("d_", _DAYS), ("i_", _ITEMS), ("s_", _STALL_ITEMS)]
_PG_WRITE = text(
    "WITH " + ", ".join(f"{p}w AS ({_pg_upsert(spec, p)})" for p, spec in _PG_SPECS)
    + f", l_w AS ({_pg_from_json(_table(db.SaleLine), 'lines')}) "
    # The notice (``store``'s ``announce``) rides the same statement; PostgreSQL sends it
    # with the commit, never before, and not at all if the transaction rolls back.
    + f"SELECT pg_notify('{SALES_CHANNEL}', CAST(:notice AS text)) WHERE CAST(:notice AS text) IS NOT NULL")


def _notice(batches: list[tuple[StallLike, list[Prepared | IngestResult]]],
            results: list[list[IngestResult]], origin: str | None) -> str | None:
    """The NOTIFY payload for what was stored, per stall, or None when nothing was."""
    if origin is None:
        return None
    stored: dict[str, int] = {}
    for (stall, _), mine in zip(batches, results, strict=True):
        n = sum(r.status == "accepted" for r in mine)
        if n:
            stored[stall.stall_id] = stored.get(stall.stall_id, 0) + n
    return json.dumps({"origin": origin, "stored": stored}) if stored else None


def _pg_columns(table: Table, prefix: str, rows: list[dict[str, Any]], params: dict[str, Any]) -> None:
    for c in table.columns:
        params[prefix + c.name] = [r[c.name] for r in rows]


def _pg_write(conn: Connection, lines_json: str, rollups: _Rollups, notice: str | None = None) -> None:
    """``sale_lines`` (``lines_json``: a JSON array of their rows) and the rollups of stored
    sales, and the notice of them, in one PostgreSQL statement."""
    params: dict[str, Any] = {"notice": notice, "lines": lines_json}
    for (prefix, spec), (_, rows) in zip(_PG_SPECS, rollups.tables(), strict=True):
        table, keys, _sums = spec
        rows.sort(key=itemgetter(*keys))
        _pg_columns(table, prefix, rows, params)
    conn.execute(_PG_WRITE, params)


def _pg_sale_json(p: Prepared, flags: list[str]) -> str:
    """The ``sales`` row of ``p`` as ``_PG_SALES`` reads it: its checked part and what storing
    decided (``received_at`` is bound once for the group)."""
    if p.row_json is None:  # checked for SQLite (a test's settings): made here instead
        p.row_json, p.lines_json = _json_texts(p.row, p.lines)
    return f'{p.row_json}, "verified": {"false" if flags else "true"}, "flags": {json.dumps(flags)}}}'


def table_rows(p: Prepared, flags: list[str],
               now: dt.datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``sales`` row and the ``sale_lines`` rows stored for a prepared sale."""
    return {**p.row, "raw": p.doc, "verified": not flags, "flags": flags, "received_at": now}, p.lines


_SALE_INSERT = insert(_table(db.Sale))
_LINE_INSERT = insert(_table(db.SaleLine))


@contextmanager
def _pg_driver(conn: Connection, what: str) -> Iterator[psycopg.Connection[Any]]:
    """The session connection's psycopg connection, for work past SQLAlchemy (a pipeline):
    psycopg's errors come up as SQLAlchemy's (``DataError``, ``IntegrityError``...),
    as a statement's would, so ``store`` and the group commit treat them alike.  ``what``
    names the work in the error."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    try:
        yield driver
    except psycopg.Error as exc:
        raise DBAPIError.instance(what, None, exc, psycopg.Error, dialect=conn.dialect) from exc


@contextmanager
def pg_pipeline(conn: Connection) -> Iterator[None]:
    """The statements run inside sent in one round trip (psycopg's pipeline mode), their
    errors raised at its end as SQLAlchemy's, as each statement's would be.

    A group of single sales sent its sales and then the lines, rollups and notice as two
    round trips; each is a wait for PostgreSQL and then for the GIL (``docs/benchmarks.md``).
    """
    with _pg_driver(conn, "(the statements of a pipeline)") as driver, driver.pipeline():
        yield


def _insert(conn: Connection, sale_rows: list[dict[str, Any]], line_rows: list[dict[str, Any]]) -> None:
    conn.execute(_SALE_INSERT, sale_rows)
    conn.execute(_LINE_INSERT, line_rows)


def _in_json(column: Any, name: str, _kind: Any) -> Any:
    """``column IN (SELECT value FROM json_each(:list))`` (SQLite): the list bound as one JSON
    text, so the statement's text is the same for every group and SQLite prepares it once
    (an expanding ``IN`` made a new text, compiled and prepared, for each list length)."""
    return column.in_(select(literal_column("value")).select_from(func.json_each(bindparam(name))))


def _in_array(column: Any, name: str, kind: Any) -> Any:
    """``column = ANY(array)`` (PostgreSQL): the list bound as one array, so the statement's
    text is the same for every group; psycopg converts it once and PostgreSQL plans four
    parameters, not several hundred (a group of 100 sales: 27 -> 12 us of the writer's CPU
    a sale)."""
    return column == any_(sql_cast(bindparam(name), postgresql.ARRAY(kind)))


def _look_up_query(sale_id: Any, trace_code: Any, stall_id: Any, receipt_no: Any, digest: Any,
                   member: Any) -> Any:
    """What the database holds of the sales being stored, in one round trip: rows with one
    of their sale ids, one of their trace codes, or a previous receipt of one of their
    stalls; each part reads its own index (primary key, unique trace code, stall and receipt).
    ``member(column, parameter, type)``: how a column is matched against a bound list."""
    found = (sale_id, trace_code, stall_id, receipt_no, digest)
    return union_all(
        select(*found).where(member(sale_id, "ids", Text)),
        select(*found).where(member(trace_code, "codes", Text)),
        select(*found).where(member(stall_id, "stalls", Text), member(receipt_no, "nos", Integer)),
    )


_S, _K = db.Sale, partitions.SALE_KEYS.c
_LOOK_UP = _look_up_query(_S.sale_id, _S.trace_code, _S.stall_id, _S.receipt_no, _S.digest, _in_json)
#: PostgreSQL: the same from ``sale_keys``, which holds every sale's keys, archived months'
#: too (``server.partitions``): one unpartitioned table with unique indexes.
_LOOK_UP_KEYS = _look_up_query(_K.sale_id, _K.trace_code, _K.stall_id, _K.receipt_no, _K.digest, _in_array)


def _look_up(conn: Connection, sales: list[Prepared]
             ) -> tuple[dict[str, str], dict[str, str], dict[str, dict[int, str]]]:
    """Known sale ids (their digests), taken trace codes (their sale ids) and the digests
    of stored receipts that precede a new one, per stall."""
    known: dict[str, str] = {}
    taken: dict[str, str] = {}
    prev: dict[str, dict[int, str]] = defaultdict(dict)
    if not sales:
        return known, taken, prev
    ids = {p.sale_id for p in sales}
    codes = {p.row["trace_code"] for p in sales}
    wanted = {(p.row["stall_id"], p.row["receipt_no"] - 1) for p in sales}
    lists = {"ids": sorted(ids), "codes": sorted(codes), "stalls": sorted({s for s, _ in wanted}),
             "nos": sorted({n for _, n in wanted})}
    if conn.dialect.name == "postgresql":
        rows = conn.execute(_LOOK_UP_KEYS, lists)
    else:
        rows = conn.execute(_LOOK_UP, {k: json.dumps(v) for k, v in lists.items()})
    for sale_id, code, stall_id, receipt_no, digest in rows:
        if sale_id in ids:
            known[sale_id] = digest
        if code in codes:
            taken[code] = sale_id
        if (stall_id, receipt_no) in wanted:
            prev[stall_id][receipt_no] = digest
    return known, taken, prev


def _store(session: Session, batches: list[tuple[StallLike, list[Prepared | IngestResult]]], *,
           one_by_one: bool, announce: str | None) -> list[list[IngestResult]]:
    prepared = [p for _, items in batches for p in items if isinstance(p, Prepared)]
    # The statements below go to the session's connection, in its transaction, past the ORM's
    # session layer (autoflush, events, result wrapping): Core statements with many rows, for
    # which that layer cost 5 to 13 % of the writer's CPU.  The ORM changes of fulfilled orders
    # are flushed later, by the alerts' queries or the commit, in the same transaction.
    conn = session.connection()
    known, taken, prev = _look_up(conn, prepared)
    # Online orders these sales fulfil (server.orders): one query, only when one names an order.
    claimed = orders.claims(session, [p.order_id for p in prepared if p.order_id is not None])
    now = dt.datetime.now(dt.UTC)
    out: list[list[IngestResult]] = []
    #: (stall id, what the alerts need of each stored sale, that stall's known receipts)
    stored_by_stall: list[tuple[str, list[tuple[int, list[str], dt.date]], dict[int, str]]] = []
    pg = conn.dialect.name == "postgresql"
    sale_rows: list[dict[str, Any]] = []
    line_rows: list[dict[str, Any]] = []
    #: PostgreSQL: the rows as JSON texts (``_PG_SALES``, ``_PG_WRITE``)
    sale_texts: list[str] = []
    line_texts: list[str] = []
    rollups = _Rollups()
    for stall, items in batches:
        results: list[IngestResult] = []
        stored: list[tuple[int, list[str], dt.date]] = []  # for the alerts
        prev_digest = prev[stall.stall_id]
        for item in items:
            if isinstance(item, IngestResult):
                results.append(item)
                continue
            sale_id, digest, row = item.sale_id, item.digest, item.row
            trace_code, receipt_no = row["trace_code"], row["receipt_no"]
            if sale_id in known:
                same = known[sale_id] == digest
                results.append(IngestResult(sale_id, "duplicate") if same else IngestResult(
                    sale_id, "refused", "sale_id already used by a different sale"))
                continue
            if trace_code in taken:
                results.append(IngestResult(sale_id, "refused", f"trace_code {trace_code} already "
                                            f"used by sale {taken[trace_code]}"))
                continue
            order_id = item.order_id
            if order_id is not None:
                why = orders.refusal(claimed.get(order_id), order_id, stall.stall_id, sale_id)
                if why is not None:  # never fulfilled twice, never another stall's order
                    results.append(IngestResult(sale_id, "refused", why))
                    continue
            flags = list(item.flags)
            previous = prev_digest.get(receipt_no - 1)
            if previous is not None and previous != row["prev_hash"]:
                flags.append("chain_mismatch")
            if one_by_one:
                sale_row, lines = table_rows(item, flags, now)
                try:
                    # session.connection() inside the block: the savepoint is only taken when
                    # the nested transaction is first asked for its connection
                    with session.begin_nested():
                        _insert(session.connection(), [sale_row], lines)
                except DataError as exc:
                    reason = _db_reason(exc)
                    logger.warning("sale %s of stall %s refused by the database: %s", sale_id,
                                   stall.stall_id, reason)
                    results.append(IngestResult(sale_id, "refused", f"the database refused this sale: "
                                                f"{reason}"))
                    continue
            elif pg:
                sale_texts.append(_pg_sale_json(item, flags))
                if item.lines_json:
                    line_texts.append(item.lines_json)
            else:
                sale_row, lines = table_rows(item, flags, now)
                sale_rows.append(sale_row)
                line_rows += lines
            known[sale_id], taken[trace_code] = digest, sale_id
            prev_digest[receipt_no] = digest
            if order_id is not None:
                orders.fulfil(claimed[order_id], item.model(), item.local.date(), now)
            rollups.add(item)
            if flags:
                logger.warning("sale %s of stall %s stored with flags %s", sale_id, stall.stall_id, flags)
            results.append(IngestResult(sale_id, "accepted", None, tuple(flags)))
            stored.append((receipt_no, flags, item.local.date()))
        out.append(results)
        stored_by_stall.append((stall.stall_id, stored, prev_digest))

    if pg:
        # One round trip: the sales, then the lines, rollups and notice (pipeline mode).
        with pg_pipeline(conn):
            if sale_texts:
                conn.execute(_PG_SALES, {"sales": f"[{','.join(sale_texts)}]", "received_at": now})
            _pg_write(conn, f"[{','.join(line_texts)}]", rollups, _notice(batches, out, announce))
    else:
        if sale_rows:
            _insert(conn, sale_rows, line_rows)
        rollups.apply(conn)
    for stall_id, stored, prev_digest in stored_by_stall:
        # Broken chains and signatures, receipt gaps: prev_digest holds every receipt number
        # ingest knows is stored before a new one, so a gap costs a query only when there is one.
        alerts.after_ingest(session, stall_id, stored, prev_digest.keys())
    return out
