"""Shared taught items: what one stall was taught, kept for the market's other stalls.

A stall uploads its own items only, signed with the receipt key it registered
(``edge.gallery_share`` says what is signed); the server checks the signature with that
key, keeps the document as received and hands it out with the key to the stalls of the
same model.  A manager may withdraw an item: it is no longer handed out, and the stalls
that imported it take it out again (its id is listed as withdrawn).

The server knows no model of its own: a model is what its stalls say (the recogniser's
embedding space).  It keeps the model's embedding size from the first item of that model
and refuses an item that claims the model with another size.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edge.gallery_share import FORMAT, MAX_ITEMS, SharedItemDoc, SharedItemOut, SharedItemsDoc
from server import db
from server.auth import Actor
from server.refusals import Conflict, NotFound, Refused

logger = logging.getLogger(__name__)


class Forbidden(Refused):
    """Another stall's item, or not signed by the uploading stall's key."""

    status = 403


@dataclass(frozen=True)
class Stored:
    id: int
    duplicate: bool


def share(session: Session, stall: db.Stall, item: SharedItemDoc) -> Stored:
    """Keep ``item`` uploaded by ``stall``; caller commits."""
    if item.stall_id != stall.stall_id:
        raise Forbidden(f"a stall shares only its own items: this token is stall {stall.stall_id}'s, "
                        f"the item says stall {item.stall_id}")
    found = session.execute(select(db.SharedItem.id).where(
        db.SharedItem.stall_id == stall.stall_id, db.SharedItem.item_id == item.item_id)).scalar()
    if found is not None:
        return Stored(found, duplicate=True)
    if not stall.public_key:
        raise Conflict(f"stall {stall.stall_id} has no signing key registered: "
                       f"PUT /api/v1/stalls/{stall.stall_id}/key first")
    if not item.verifies(stall.public_key):
        raise Forbidden(f"the item's signature does not verify with stall {stall.stall_id}'s "
                        "registered signing key")
    dim = session.execute(select(db.SharedItem.dim).where(db.SharedItem.model == item.model)
                          .limit(1)).scalar()
    if dim is not None and dim != item.dim:
        raise Conflict(f"model {item.model} has embeddings of size {dim}, this item {item.dim}: "
                       "it is another model under the same name")
    row = db.SharedItem(stall_id=stall.stall_id, item_id=item.item_id, label=item.label, plu=item.plu,
                        name=item.name, model=item.model, dim=item.dim, count=item.count,
                        doc=item.model_dump(mode="json"), taught_at=item.taught_at,
                        received_at=dt.datetime.now(dt.UTC))
    session.add(row)
    session.flush()
    logger.info("stall %s shared item %s (PLU %s, %d exemplars) as %d", stall.stall_id, item.label,
                item.plu, item.count, row.id)
    return Stored(row.id, duplicate=False)


def etag(session: Session, stall_id: str, model: str) -> str:
    """Changes when an item of ``model`` is shared or withdrawn (neither is ever undone)."""
    shared, last, withdrawn = session.execute(
        select(func.count(db.SharedItem.id), func.max(db.SharedItem.id),
               func.count(db.SharedItem.withdrawn_at)).where(db.SharedItem.model == model)).one()
    tag = hashlib.sha256(model.encode()).hexdigest()[:12]
    return f'"gallery{FORMAT}-{shared}-{last or 0}-{withdrawn}-{stall_id}-{tag}"'


def shared_for(session: Session, stall_id: str, model: str) -> SharedItemsDoc:
    """The items of ``model`` other stalls shared and nobody withdrew (the newest
    ``MAX_ITEMS``, oldest first), each with its stall's key; and the ids withdrawn."""
    rows = session.execute(
        select(db.SharedItem, db.Stall.public_key).join(db.Stall, db.Stall.stall_id == db.SharedItem.stall_id)
        .where(db.SharedItem.model == model, db.SharedItem.stall_id != stall_id,
               db.SharedItem.withdrawn_at.is_(None), db.Stall.public_key.is_not(None))
        .order_by(db.SharedItem.id.desc()).limit(MAX_ITEMS)).all()
    withdrawn = session.execute(select(db.SharedItem.id).where(
        db.SharedItem.model == model, db.SharedItem.withdrawn_at.is_not(None))
        .order_by(db.SharedItem.id)).scalars().all()
    items = [SharedItemOut(id=row.id, public_key=key, received_at=row.received_at,
                           item=SharedItemDoc.model_validate(row.doc)) for row, key in reversed(rows)]
    return SharedItemsDoc(format=FORMAT, model=model, items=items, withdrawn=list(withdrawn))


def withdraw(session: Session, actor: Actor, shared_id: int) -> db.SharedItem:
    """Stop handing the item out; caller commits.  Withdrawing it again changes nothing."""
    row = session.get(db.SharedItem, shared_id)
    if row is None:
        raise NotFound(f"no shared item {shared_id}")
    if row.withdrawn_at is None:
        row.withdrawn_at, row.withdrawn_by = dt.datetime.now(dt.UTC), actor.who
        logger.info("shared item %d (%s of stall %s) withdrawn by %s", shared_id, row.label,
                    row.stall_id, actor.who)
    return row


def withdraw_own(session: Session, stall: db.Stall, item_id: str) -> tuple[db.SharedItem, bool]:
    """The teaching stall takes back an item it shared (its tap was voided); caller commits.
    The row, and whether this call withdrew it (False: it was withdrawn before)."""
    row = session.execute(select(db.SharedItem).where(
        db.SharedItem.stall_id == stall.stall_id, db.SharedItem.item_id == item_id)).scalar()
    if row is None:
        raise NotFound(f"stall {stall.stall_id} shared no item {item_id}")
    if row.withdrawn_at is not None:
        return row, False
    row.withdrawn_at, row.withdrawn_by = dt.datetime.now(dt.UTC), f"stall {stall.stall_id}"
    logger.info("shared item %d (%s) withdrawn by its stall %s", row.id, row.label, stall.stall_id)
    return row, True


def listing(session: Session, limit: int, offset: int) -> list[db.SharedItem]:
    """Every shared item, the newest first, withdrawn ones included."""
    return list(session.execute(select(db.SharedItem).order_by(db.SharedItem.id.desc())
                                .limit(limit).offset(offset)).scalars())
