"""Alerts for the market manager: raised once per ``key``, acknowledged by a manager.

Whoever notices something raises it here (ingest: broken chains and signatures,
receipt gaps; prices: far above the market median; inspections: a failed batch;
scale events; silent stalls).  The ``key`` says what the alert is about, so the same
finding raised again (a resent batch, a re-run check) is one alert, not many.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server import db

logger = logging.getLogger(__name__)

KINDS = ("price_high", "receipt_gap", "bad_chain", "bad_signature", "scale_event",
         "stall_silent", "inspection_failed")


def raise_alert(session: Session, kind: str, key: str, detail: str, *, stall_id: str | None = None,
                plu: str | None = None, at: dt.datetime | None = None) -> db.Alert | None:
    """Add the alert ``kind:key`` in the caller's transaction; None if it was raised before."""
    if kind not in KINDS:
        raise ValueError(f"unknown alert kind {kind!r}")
    full_key = f"{kind}:{key}"[:128]
    if session.execute(select(db.Alert.id).where(db.Alert.key == full_key)).first() is not None:
        return None
    alert = db.Alert(key=full_key, kind=kind, stall_id=stall_id, plu=plu, detail=detail[:400],
                     raised_at=at or dt.datetime.now(dt.UTC))
    try:
        with session.begin_nested():  # another process may raise the same alert at once
            session.add(alert)
    except IntegrityError:
        return None
    logger.warning("alert %s: %s", full_key, detail)
    return alert
