"""Stalls as the market manager keeps them: registration, tokens and signing keys.

Shared by the JSON API (``server/routes/stalls.py``) and the manager pages, so the rules
live here once: one trace-code stall number per stall (``S1`` and ``S01`` are one), a
token shown only when it is made (only its SHA-256 is stored), and a signing key that
only the stall itself registers the first time and only a manager replaces.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from edge.tracecode import stall_id_aliases, stall_number
from server import db
from server.auth import Actor, new_token, token_hash
from server.refusals import Conflict, NotFound

logger = logging.getLogger(__name__)


def register(session: Session, actor: Actor, stall_id: str, name: str,
             public_key: str | None) -> str:
    """Add a stall (``stall_id`` and ``public_key`` already checked by ``StallCreate``); its
    bearer token, which is not kept.  Caller commits."""
    if session.get(db.Stall, stall_id) is not None:
        raise Conflict(f"stall {stall_id} already exists")
    # S1, S01 and S001 are one trace-code stall number: two stalls with it could take
    # each other's receipt numbers, so the second is refused here, not at its first sale.
    owner = session.execute(select(db.Stall.stall_id).where(
        db.Stall.stall_id.in_(stall_id_aliases(stall_number(stall_id))))).scalar()
    if owner is not None:
        raise Conflict(f"stall {stall_id} would have the trace-code stall number of stall {owner}; "
                       "choose another number")
    token = new_token()
    session.add(db.Stall(stall_id=stall_id, name=name, token_sha256=token_hash(token),
                         public_key=public_key, created_at=dt.datetime.now(dt.UTC)))
    logger.info("stall %s registered by %s", stall_id, actor.who)
    return token


def get(session: Session, stall_id: str) -> db.Stall:
    stall = session.get(db.Stall, stall_id)
    if stall is None:
        raise NotFound(f"no stall {stall_id}")
    return stall


def rotate_token(session: Session, actor: Actor, stall_id: str) -> str:
    """A new bearer token for the stall; the old one stops working at the commit (in the other
    server processes when the commit's notice reaches them: ``server.auth.StallTokens``).
    Caller commits."""
    stall = get(session, stall_id)
    token = new_token()
    stall.token_sha256 = token_hash(token)
    logger.info("token of stall %s replaced by %s", stall_id, actor.who)
    return token


def replace_key(session: Session, actor: Actor, stall_id: str, public_key: str | None) -> db.Stall:
    """Set the stall's signing key (checked by ``StallKey``), or clear it so the stall registers
    its new one itself (``PUT /api/v1/stalls/{id}/key``).  Caller commits."""
    stall = get(session, stall_id)
    stall.public_key = public_key
    logger.info("signing key of stall %s %s by %s", stall_id, "replaced" if public_key else "cleared",
                actor.who)
    return stall


@dataclass(frozen=True, slots=True)
class StallRow:
    stall_id: str
    name: str
    public_key: str | None
    last_seen_at: dt.datetime | None
    sales_today: int
    total_fen_today: int


def overview(session: Session, day: dt.date) -> list[StallRow]:
    """Every stall with its key, last contact and today's sales (three indexed reads)."""
    seen = dict(session.execute(select(db.StallContact.stall_id, db.StallContact.last_seen_at)).all())
    today = {sid: (n, t) for sid, n, t in session.execute(
        select(db.StallDay.stall_id, db.StallDay.sales, db.StallDay.total_fen)
        .where(db.StallDay.local_day == day))}
    return [StallRow(s.stall_id, s.name, s.public_key, seen.get(s.stall_id),
                     *today.get(s.stall_id, (0, 0)))
            for s in session.execute(select(db.Stall).order_by(db.Stall.stall_id)).scalars()]
