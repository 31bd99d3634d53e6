"""A device's or a reader's bearer token kept in ``server_meta``: issued by a manager, shown once,
only its SHA-256 stored; a new one replaces the old.  The commerce bureau's export token
(``server.export``) and the fair scale's token (``server.fair_checks``) are two of these."""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from server import db
from server.auth import Actor, new_token, token_hash

logger = logging.getLogger(__name__)


class TokenInfo(BaseModel):
    issued: bool
    issued_by: str | None = None
    issued_at: dt.datetime | None = None


class IssuedToken(TokenInfo):
    token: str = Field(description="shown once; only its SHA-256 is kept")


class MetaToken:
    """The token stored under ``key``; ``what`` names its holder in the log."""

    def __init__(self, key: str, what: str) -> None:
        self.key, self.what = key, what

    def _stored(self, session: Session) -> dict[str, str] | None:
        value = session.execute(select(db.Meta.value).where(db.Meta.key == self.key)).scalar()
        return json.loads(value) if value else None

    def info(self, session: Session) -> TokenInfo:
        stored = self._stored(session)
        if stored is None:
            return TokenInfo(issued=False)
        return TokenInfo(issued=True, issued_by=stored["by"],
                         issued_at=dt.datetime.fromisoformat(stored["at"]))

    def issue(self, session: Session, actor: Actor) -> IssuedToken:
        """A new token, replacing any before it (the caller commits)."""
        token, now = new_token(), dt.datetime.now(dt.UTC)
        value = json.dumps({"sha256": token_hash(token), "by": actor.who, "at": now.isoformat()})
        row = session.get(db.Meta, self.key)
        if row is None:
            session.add(db.Meta(key=self.key, value=value))
        else:
            row.value = value
        logger.info("%s token issued by %s", self.what, actor.who)
        return IssuedToken(issued=True, issued_by=actor.who, issued_at=now, token=token)

    def revoke(self, session: Session, actor: Actor) -> bool:
        """Revoke the token (the caller commits); False if there was none."""
        row = session.get(db.Meta, self.key)
        if row is None:
            return False
        session.delete(row)
        logger.info("%s token revoked by %s", self.what, actor.who)
        return True

    def matches(self, session: Session, token: str) -> bool:
        stored = self._stored(session)
        return stored is not None and hmac.compare_digest(stored["sha256"], token_hash(token))


EXPORT = MetaToken("export_token", "bureau export")
FAIR_SCALE = MetaToken("fair_scale_token", "fair scale")
