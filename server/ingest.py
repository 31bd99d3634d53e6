"""Sale ingest: idempotent by ``sale_id``, verified, folded into rollups.

A sale whose signature or chain does not verify is still stored, with flags:
the market must see a forged or broken receipt, not lose it.  Only a sale
that is not a sale at all (bad shape, wrong stall) is refused.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from dataclasses import dataclass
from typing import Any, Literal, cast

from pydantic import ValidationError
from sqlalchemy import Table, select
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
        return {
            "sale_id": self.sale_id,
            "status": self.status,
            "reason": self.reason,
            "flags": list(self.flags),
        }


def _validation_reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "sale"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _upsert(session: Session, table: type[db.Base], keys: dict[str, Any], adds: dict[str, int],
            sets: dict[str, Any] | None = None) -> None:
    """Add ``adds`` to an existing rollup row or create it, in one statement."""
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    tbl = cast(Table, table.__table__)
    stmt = insert(tbl).values(**keys, **adds, **(sets or {}))
    update = {k: tbl.c[k] + stmt.excluded[k] for k in adds}
    update.update({k: stmt.excluded[k] for k in (sets or {})})
    session.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=update))


def ingest_one(session: Session, stall: db.Stall, raw: Any, tz: zoneinfo.ZoneInfo) -> IngestResult:
    sale_id = raw.get("sale_id") if isinstance(raw, dict) else None
    sale_id = sale_id if isinstance(sale_id, str) else None
    try:
        sale = SaleModel.model_validate(raw)
    except ValidationError as exc:
        return IngestResult(sale_id, "refused", _validation_reason(exc))
    sale_id = str(sale.sale_id)
    if sale.stall_id != stall.stall_id:
        return IngestResult(sale_id, "refused", f"sale belongs to stall {sale.stall_id}, "
                            f"token is stall {stall.stall_id}'s")
    try:
        check_sale(sale)
    except EdgeError as exc:
        return IngestResult(sale_id, "refused", str(exc))

    doc = sale.to_json()
    digest = sale_digest(doc)
    existing = session.get(db.Sale, sale_id)
    if existing is not None:
        if existing.digest == digest:
            return IngestResult(sale_id, "duplicate")
        return IngestResult(sale_id, "refused", "sale_id already used by a different sale")

    flags: list[str] = []
    if not stall.public_key:
        flags.append("no_stall_key")
    elif not verify_sale(doc, stall.public_key):
        flags.append("bad_signature")
    prev = session.execute(
        select(db.Sale.digest).where(
            db.Sale.stall_id == stall.stall_id, db.Sale.receipt_no == sale.receipt_no - 1
        )
    ).scalar_one_or_none()
    if prev is not None and prev != sale.prev_hash:
        flags.append("chain_mismatch")

    local = sale.sold_at.astimezone(tz)
    row = db.Sale(
        sale_id=sale_id,
        stall_id=sale.stall_id,
        receipt_no=sale.receipt_no,
        trace_code=sale.trace_code,
        sold_at=sale.sold_at,
        local_day=local.date(),
        total_fen=sale.total_fen,
        digest=digest,
        prev_hash=sale.prev_hash,
        signature=sale.signature,
        verified=not flags,
        flags=flags,
        raw=doc,
        received_at=dt.datetime.now(dt.UTC),
        lines=[
            db.SaleLine(
                idx=i, plu=ln.plu, name=ln.name, weight_g=ln.weight_g, quantity=ln.quantity,
                unit_price_fen=ln.unit_price_fen, price_unit=ln.price_unit,
                amount_fen=ln.amount_fen, batch_code=ln.batch_code,
            )
            for i, ln in enumerate(sale.lines)
        ],
    )
    clash = session.execute(
        select(db.Sale.sale_id).where(db.Sale.trace_code == sale.trace_code)
    ).scalar_one_or_none()
    if clash is not None:
        return IngestResult(sale_id, "refused", f"trace_code {sale.trace_code} already used by "
                            f"sale {clash}")
    session.add(row)
    session.flush()

    _upsert(session, db.StallHour,
            {"local_day": local.date(), "hour": local.hour, "stall_id": sale.stall_id},
            {"sales": 1, "total_fen": sale.total_fen})
    for ln in sale.lines:
        _upsert(session, db.ItemDay, {"local_day": local.date(), "plu": ln.plu},
                {"lines": 1, "weight_g": ln.weight_g or 0, "quantity": ln.quantity or 0,
                 "amount_fen": ln.amount_fen},
                {"name": ln.name})
    if flags:
        logger.warning("sale %s of stall %s stored with flags %s", sale_id, stall.stall_id, flags)
    return IngestResult(sale_id, "accepted", None, tuple(flags))
