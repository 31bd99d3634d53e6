"""Is a receipt genuine?  The one answer the trace page (``/t/{code}``) and the fair scale
(``server.fair_checks``) give a shopper about the receipt in her hand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from edge import EdgeError
from edge.integrity import verify_sale
from edge.tracecode import parse_trace_code
from server import db

#: genuine: stored, unflagged, its signature verifies with the stall's registered key;
#: mismatch: the paper's signature is not the stored one (an altered receipt);
#: unverified: stored but its signature or chain fails; unknown: no such receipt;
#: invalid: not a trace code at all.
ReceiptVerdict = Literal["genuine", "mismatch", "unverified", "unknown", "invalid"]


@dataclass(frozen=True, slots=True)
class ReceiptCheck:
    verdict: ReceiptVerdict
    sale: db.Sale | None = None
    stall: db.Stall | None = None
    reason: str | None = None


def check_receipt(session: Session, trace_code: str, signature: str | None) -> ReceiptCheck:
    """What the server holds of the receipt ``trace_code`` whose paper carries ``signature``."""
    try:
        parse_trace_code(trace_code)
    except EdgeError as exc:
        return ReceiptCheck("invalid", reason=str(exc))
    row = session.execute(select(db.Sale).where(db.Sale.trace_code == trace_code)).scalar_one_or_none()
    if row is None:
        return ReceiptCheck("unknown")
    stall = session.get(db.Stall, row.stall_id)
    genuine = bool(stall and stall.public_key and verify_sale(row.raw, stall.public_key))
    if signature is not None and signature != row.signature:
        verdict: ReceiptVerdict = "mismatch"
    elif genuine and row.verified:
        verdict = "genuine"
    else:
        verdict = "unverified"
    return ReceiptCheck(verdict, row, stall)
