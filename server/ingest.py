"""Sale ingest: idempotent by ``sale_id``, verified, folded into rollups.

A sale whose signature or chain does not verify is still stored, with flags:
the market must see a forged or broken receipt, not lose it.  Only a sale
that is not a sale at all (bad shape, wrong stall, wrong prices) is refused.

A sale is checked by the same ``edge.sale.Sale`` model the stalls journal with,
given this market (region, market number) and the posting stall as validation
context: a trace code of another market or stall is refused before it can take
the unique slot that belongs to that stall's genuine receipt.  Each sale stands
alone: one refused, for whatever reason, never blocks the others of its batch.

A batch is ingested with a fixed number of statements whatever its size: the
look-ups (the stall's trace-code number, known sale ids, trace codes, previous
receipts' digests) are one query each, the new rows one bulk insert, and the
rollups are summed in Python first and applied as one upsert per touched row.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from pydantic import ValidationError
from sqlalchemy import Table, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.orm import Session

from edge import EdgeError
from edge.integrity import sale_digest, verify_sale
from edge.pricing import check_sale
from edge.sale import Sale as SaleModel
from edge.tracecode import stall_id_aliases, stall_number
from server import alerts, db
from server.settings import Settings

logger = logging.getLogger(__name__)

Outcome = Literal["accepted", "duplicate", "refused"]


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


def _validate(stall: db.Stall, raw: Any, settings: Settings,
              number_owner: str | None) -> SaleModel | IngestResult:
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


def _number_owner(session: Session, stall: db.Stall) -> str | None:
    """The stall that owns the posting stall's trace-code number: the first registered of
    the ids that share it (S1, S01, S001...), so a later alias can never take its codes."""
    try:
        aliases = stall_id_aliases(stall_number(stall.stall_id))
    except EdgeError:
        return None  # no number at all: each sale is refused by the model, with the reason
    rows = session.execute(select(db.Stall.stall_id).where(db.Stall.stall_id.in_(aliases))
                           .order_by(db.Stall.created_at, db.Stall.stall_id).limit(1)).all()
    return str(rows[0][0]) if rows else None


def _upsert_sum(session: Session, table: Table, keys: tuple[str, ...],
                rows: list[dict[str, Any]], sums: tuple[str, ...]) -> None:
    """Add the ``sums`` columns of ``rows`` to existing rows, or create them (one statement)."""
    if not rows:
        return
    dialect_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = dialect_insert(table)
    update = {c: table.c[c] + stmt.excluded[c] for c in sums}
    update.update({c: stmt.excluded[c] for c in rows[0] if c not in keys and c not in sums})
    session.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=update), rows)


def _table(model: type[db.Base]) -> Table:
    return cast(Table, model.__table__)


def ingest_batch(session: Session, stall: db.Stall, raws: list[Any],
                 settings: Settings) -> list[IngestResult]:
    """Validate, verify and store a stall's batch; the caller commits.

    Each sale stands alone: one that fails validation, conversion or its own insert
    is refused with the reason, and the others are stored.  The batch is first
    inserted in bulk; only when the database refuses a row (PostgreSQL refuses,
    say, a NUL character in a text column) is it stored again sale by sale, each in
    its own savepoint.  A database that fails as a whole (connection, disk) is no
    sale's fault: that error goes up and the stall sends again later.
    """
    try:
        with session.begin_nested():
            return _ingest(session, stall, raws, settings, one_by_one=False)
    except DataError as exc:
        logger.warning("stall %s: the database refused a row of the batch (%s); storing it "
                       "sale by sale", stall.stall_id, _db_reason(exc))
    with session.begin_nested():
        return _ingest(session, stall, raws, settings, one_by_one=True)


def _db_reason(exc: DBAPIError) -> str:
    lines = str(exc.orig).strip().splitlines()
    return lines[0] if lines else type(exc.orig).__name__


@dataclass(slots=True)
class _Rollups:
    """The batch's stored sales summed per (day, hour), per (day, item) and per
    (day, item) of the stall; its day totals are the sums of its hours."""

    hours: dict[tuple[dt.date, int], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0]))
    items: dict[tuple[dt.date, str], dict[str, Any]] = field(default_factory=dict)
    stall_items: dict[tuple[dt.date, str], dict[str, Any]] = field(default_factory=dict)

    def add(self, sale: SaleModel, local: dt.datetime) -> None:
        day = local.date()
        for ln in sale.lines:
            item = self.items.setdefault((day, ln.plu), {"local_day": day, "plu": ln.plu, "lines": 0,
                                                         "weight_g": 0, "quantity": 0, "amount_fen": 0})
            item["name"] = ln.name
            name_en = (ln.model_extra or {}).get("name_en")
            item["name_en"] = name_en[:64] if isinstance(name_en, str) and name_en else None
            item["lines"] += 1
            item["weight_g"] += ln.weight_g or 0
            item["quantity"] += ln.quantity or 0
            item["amount_fen"] += ln.amount_fen
            mine = self.stall_items.setdefault((day, ln.plu), {
                "local_day": day, "stall_id": sale.stall_id, "plu": ln.plu, "lines": 0,
                "weight_g": 0, "quantity": 0, "amount_fen": 0})
            mine["lines"] += 1
            mine["weight_g"] += ln.weight_g or 0
            mine["quantity"] += ln.quantity or 0
            mine["amount_fen"] += ln.amount_fen
        hour = self.hours[(day, local.hour)]
        hour[0] += 1
        hour[1] += sale.total_fen

    def apply(self, session: Session, stall_id: str) -> None:
        _upsert_sum(session, _table(db.StallHour), ("local_day", "hour", "stall_id"),
                    [{"local_day": d, "hour": h, "stall_id": stall_id, "sales": n, "total_fen": t}
                     for (d, h), (n, t) in self.hours.items()], ("sales", "total_fen"))
        days: dict[dt.date, list[int]] = defaultdict(lambda: [0, 0])
        for (d, _), (n, t) in self.hours.items():
            days[d][0] += n
            days[d][1] += t
        _upsert_sum(session, _table(db.StallDay), ("local_day", "stall_id"),
                    [{"local_day": d, "stall_id": stall_id, "sales": n, "total_fen": t}
                     for d, (n, t) in days.items()], ("sales", "total_fen"))
        _upsert_sum(session, _table(db.ItemDay), ("local_day", "plu"), list(self.items.values()),
                    ("lines", "weight_g", "quantity", "amount_fen"))
        _upsert_sum(session, _table(db.StallItemDay), ("local_day", "stall_id", "plu"),
                    list(self.stall_items.values()), ("lines", "weight_g", "quantity", "amount_fen"))


def _rows(sale: SaleModel, doc: dict[str, Any], digest: str, flags: list[str], local: dt.datetime,
          now: dt.datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    sale_id = str(sale.sale_id)
    sale_row = {
        "sale_id": sale_id, "stall_id": sale.stall_id, "receipt_no": sale.receipt_no,
        "trace_code": sale.trace_code, "sold_at": sale.sold_at, "local_day": local.date(),
        "total_fen": sale.total_fen, "digest": digest, "prev_hash": sale.prev_hash,
        "signature": sale.signature, "verified": not flags, "flags": flags, "raw": doc,
        "received_at": now,
    }
    line_rows = [{
        "sale_id": sale_id, "idx": i, "plu": ln.plu, "name": ln.name, "weight_g": ln.weight_g,
        "quantity": ln.quantity, "unit_price_fen": ln.unit_price_fen,
        "price_unit": ln.price_unit, "amount_fen": ln.amount_fen, "batch_code": ln.batch_code,
    } for i, ln in enumerate(sale.lines)]
    return sale_row, line_rows


def _insert(session: Session, sale_rows: list[dict[str, Any]], line_rows: list[dict[str, Any]]) -> None:
    session.execute(insert(_table(db.Sale)), sale_rows)
    session.execute(insert(_table(db.SaleLine)), line_rows)


def _ingest(session: Session, stall: db.Stall, raws: list[Any], settings: Settings, *,
            one_by_one: bool) -> list[IngestResult]:
    owner = _number_owner(session, stall)
    checked = [_validate(stall, raw, settings, owner) for raw in raws]
    sales = [s for s in checked if isinstance(s, SaleModel)]
    ids = {str(s.sale_id) for s in sales}
    codes = {s.trace_code for s in sales}
    prev_nos = {s.receipt_no - 1 for s in sales}
    known: dict[str, str] = dict(session.execute(select(db.Sale.sale_id, db.Sale.digest)
                                 .where(db.Sale.sale_id.in_(ids))).all()) if ids else {}
    taken: dict[str, str] = dict(session.execute(select(db.Sale.trace_code, db.Sale.sale_id)
                                 .where(db.Sale.trace_code.in_(codes))).all()) if codes else {}
    prev_digest: dict[int, str] = dict(session.execute(
        select(db.Sale.receipt_no, db.Sale.digest)
        .where(db.Sale.stall_id == stall.stall_id, db.Sale.receipt_no.in_(prev_nos))
    ).all()) if prev_nos else {}

    now = dt.datetime.now(dt.UTC)
    results: list[IngestResult] = []
    stored: list[tuple[int, list[str], dt.date]] = []  # for the alerts
    sale_rows: list[dict[str, Any]] = []
    line_rows: list[dict[str, Any]] = []
    rollups = _Rollups()
    for sale in checked:
        if isinstance(sale, IngestResult):
            results.append(sale)
            continue
        sale_id = str(sale.sale_id)
        try:
            doc = sale.to_json()
            digest = sale_digest(doc)
            local = sale.sold_at.astimezone(settings.tz)
        except Exception as exc:  # noqa: BLE001 - one sale's failure must not block the batch
            # A valid Sale should never get here; if one does, it is refused with the
            # reason (and logged for us) instead of failing the stall's upload for ever.
            logger.exception("sale %s of stall %s cannot be prepared", sale_id, stall.stall_id)
            results.append(IngestResult(sale_id, "refused", f"cannot store this sale: {exc}"))
            continue
        if sale_id in known:
            same = known[sale_id] == digest
            results.append(IngestResult(sale_id, "duplicate") if same else IngestResult(
                sale_id, "refused", "sale_id already used by a different sale"))
            continue
        if sale.trace_code in taken:
            results.append(IngestResult(sale_id, "refused", f"trace_code {sale.trace_code} already "
                                        f"used by sale {taken[sale.trace_code]}"))
            continue
        flags: list[str] = []
        if not stall.public_key:
            flags.append("no_stall_key")
        elif not verify_sale(doc, stall.public_key):
            flags.append("bad_signature")
        prev = prev_digest.get(sale.receipt_no - 1)
        if prev is not None and prev != sale.prev_hash:
            flags.append("chain_mismatch")
        sale_row, lines = _rows(sale, doc, digest, flags, local, now)
        if one_by_one:
            try:
                with session.begin_nested():
                    _insert(session, [sale_row], lines)
            except DataError as exc:
                reason = _db_reason(exc)
                logger.warning("sale %s of stall %s refused by the database: %s", sale_id,
                               stall.stall_id, reason)
                results.append(IngestResult(sale_id, "refused", f"the database refused this sale: "
                                            f"{reason}"))
                continue
        else:
            sale_rows.append(sale_row)
            line_rows += lines
        known[sale_id], taken[sale.trace_code] = digest, sale_id
        prev_digest[sale.receipt_no] = digest
        rollups.add(sale, local)
        if flags:
            logger.warning("sale %s of stall %s stored with flags %s", sale_id, stall.stall_id, flags)
        results.append(IngestResult(sale_id, "accepted", None, tuple(flags)))
        stored.append((sale.receipt_no, flags, local.date()))

    if sale_rows:
        _insert(session, sale_rows, line_rows)
    rollups.apply(session, stall.stall_id)
    # Broken chains and signatures, receipt gaps: prev_digest holds every receipt number
    # ingest knows is stored before a new one, so a gap costs a query only when there is one.
    alerts.after_ingest(session, stall.stall_id, stored, prev_digest.keys())
    return results
