"""Catalogue rows for the inspection, special and scale-event tests, written through the ORM
into the live server's own database (the catalogue's API is another part's to test)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from server import db, feedversion
from tests.conftest import LiveServer


def add_item(server: LiveServer, plu: str, name: str, *, unit: str = "kg", cap_fen: int | None = None,
             active: bool = True, prices: dict[str, int] | None = None) -> None:
    """An item of the market catalogue and the given stalls' regular prices of it."""
    now = dt.datetime.now(dt.UTC)
    with server.app.state.sessionmaker.begin() as session:
        session.add(db.Item(plu=plu, name=name, name_en=f"item {plu}", category="蔬菜", price_unit=unit,
                            cap_fen=cap_fen, active=active, created_at=now, updated_at=now))
        session.flush()
        for stall_id, fen in (prices or {}).items():
            session.add(db.StallPrice(stall_id=stall_id, plu=plu, unit_price_fen=fen, updated_at=now))


def feed_version(server: LiveServer) -> int:
    with server.app.state.sessionmaker() as session:
        return feedversion.current(session)


def alerts(server: LiveServer, kind: str) -> list[db.Alert]:
    with server.app.state.sessionmaker() as session:
        return list(session.execute(select(db.Alert).where(db.Alert.kind == kind)
                                    .order_by(db.Alert.id)).scalars())
