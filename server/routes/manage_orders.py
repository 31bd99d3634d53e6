"""The manager's page of online orders (``server.orders``): the latest orders with their state,
estimate and final amount, and the online share of a market day's sales."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from server import db, orders
from server.auth import ManagerDep
from server.deps import SessionDep, SettingsDep
from server.routes.manage_common import PageRoute, render, today

router = APIRouter(prefix="/manage", include_in_schema=False, route_class=PageRoute)

STATES = ("placed", "accepted", "weighing", "ready", "picked_up", "cancelled")


@router.get("/orders", response_class=HTMLResponse)
def orders_page(request: Request, session: SessionDep, settings: SettingsDep, _: ManagerDep,
                state: Annotated[str | None, Query(max_length=16)] = None,
                day: dt.date | None = None) -> Response:
    state = state if state in STATES else None
    stmt = select(db.Order).options(orders.WITH_LINES).order_by(db.Order.id.desc()).limit(300)
    if state is not None:
        stmt = stmt.where(db.Order.state == state)
    rows = list(session.scalars(stmt).unique())
    names = orders.stall_names(session, [o.stall_id for o in rows])
    listed = [orders.to_json(o, names.get(o.stall_id, ""), settings.tz, for_stall=True) for o in rows]
    when = day or today(settings)
    return render(request, "orders.html", {"rows": listed, "state": state, "states": STATES,
                                            "share": orders.online_share(session, when), "day": when})
