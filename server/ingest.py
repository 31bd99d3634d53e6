"""Sale ingest: idempotent by ``sale_id``, verified, folded into rollups.

A sale whose signature or chain does not verify is still stored, with flags:
the market must see a forged or broken receipt, not lose it.  Only a sale
that is not a sale at all (bad shape, wrong stall, wrong prices) is refused.

A batch is ingested with a fixed number of statements whatever its size: the
look-ups (known sale ids, trace codes, previous receipts' digests) are one
query each, the new rows one bulk insert, and the rollups are summed in
Python first and applied as one upsert per touched row.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal, cast

from pydantic import ValidationError
from sqlalchemy import Table, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from edge import EdgeError
from edge.integrity import sale_digest, verify_sale
from edge.pricing import check_sale
from edge.sale import Sale as SaleModel
from server import db

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


def _validate(stall: db.Stall, raw: Any) -> SaleModel | IngestResult:
    try:
        sale = SaleModel.model_validate(raw)
    except ValidationError as exc:
        return IngestResult(_raw_id(raw), "refused", _validation_reason(exc))
    if sale.stall_id != stall.stall_id:
        return IngestResult(str(sale.sale_id), "refused",
                            f"sale belongs to stall {sale.stall_id}, token is stall {stall.stall_id}'s")
    # A stall on the shopper-friendly rule says so in the sale ("rounding"); both
    # rules are legal, and an unknown one is refused by check_sale itself.
    rule = getattr(sale, "rounding", None) or "half-up"
    try:
        check_sale(sale, rule=str(rule))
    except EdgeError as exc:
        return IngestResult(str(sale.sale_id), "refused", str(exc))
    return sale


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
                 tz: zoneinfo.ZoneInfo) -> list[IngestResult]:
    """Validate, verify and store a stall's batch; the caller commits."""
    checked = [_validate(stall, raw) for raw in raws]
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
    sale_rows: list[dict[str, Any]] = []
    line_rows: list[dict[str, Any]] = []
    hours: dict[tuple[dt.date, int], list[int]] = defaultdict(lambda: [0, 0])
    items: dict[tuple[dt.date, str], dict[str, Any]] = {}
    for sale in checked:
        if isinstance(sale, IngestResult):
            results.append(sale)
            continue
        sale_id = str(sale.sale_id)
        doc = sale.to_json()
        digest = sale_digest(doc)
        if sale_id in known:
            same = known[sale_id] == digest
            results.append(IngestResult(sale_id, "duplicate") if same else IngestResult(
                sale_id, "refused", "sale_id already used by a different sale"))
            continue
        if sale.trace_code in taken:
            results.append(IngestResult(sale_id, "refused", f"trace_code {sale.trace_code} already "
                                        f"used by sale {taken[sale.trace_code]}"))
            continue
        known[sale_id], taken[sale.trace_code] = digest, sale_id
        flags: list[str] = []
        if not stall.public_key:
            flags.append("no_stall_key")
        elif not verify_sale(doc, stall.public_key):
            flags.append("bad_signature")
        prev = prev_digest.get(sale.receipt_no - 1)
        if prev is not None and prev != sale.prev_hash:
            flags.append("chain_mismatch")
        prev_digest[sale.receipt_no] = digest

        local = sale.sold_at.astimezone(tz)
        day = local.date()
        sale_rows.append({
            "sale_id": sale_id, "stall_id": sale.stall_id, "receipt_no": sale.receipt_no,
            "trace_code": sale.trace_code, "sold_at": sale.sold_at, "local_day": day,
            "total_fen": sale.total_fen, "digest": digest, "prev_hash": sale.prev_hash,
            "signature": sale.signature, "verified": not flags, "flags": flags, "raw": doc,
            "received_at": now,
        })
        for i, ln in enumerate(sale.lines):
            line_rows.append({
                "sale_id": sale_id, "idx": i, "plu": ln.plu, "name": ln.name, "weight_g": ln.weight_g,
                "quantity": ln.quantity, "unit_price_fen": ln.unit_price_fen,
                "price_unit": ln.price_unit, "amount_fen": ln.amount_fen, "batch_code": ln.batch_code,
            })
            item = items.setdefault((day, ln.plu), {"local_day": day, "plu": ln.plu, "lines": 0,
                                                    "weight_g": 0, "quantity": 0, "amount_fen": 0})
            item["name"] = ln.name
            item["lines"] += 1
            item["weight_g"] += ln.weight_g or 0
            item["quantity"] += ln.quantity or 0
            item["amount_fen"] += ln.amount_fen
        hour = hours[(day, local.hour)]
        hour[0] += 1
        hour[1] += sale.total_fen
        if flags:
            logger.warning("sale %s of stall %s stored with flags %s", sale_id, stall.stall_id, flags)
        results.append(IngestResult(sale_id, "accepted", None, tuple(flags)))

    if sale_rows:
        session.execute(insert(_table(db.Sale)), sale_rows)
        session.execute(insert(_table(db.SaleLine)), line_rows)
        _upsert_sum(session, _table(db.StallHour), ("local_day", "hour", "stall_id"),
                    [{"local_day": d, "hour": h, "stall_id": stall.stall_id, "sales": n, "total_fen": t}
                     for (d, h), (n, t) in hours.items()], ("sales", "total_fen"))
        _upsert_sum(session, _table(db.ItemDay), ("local_day", "plu"), list(items.values()),
                    ("lines", "weight_g", "quantity", "amount_fen"))
    return results
