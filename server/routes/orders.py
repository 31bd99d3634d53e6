"""Online orders over HTTP: the shopper's (a signed cookie after sign-in with her phone number),
the stall's (its bearer token) and the manager's list.  ``server.orders`` holds the rules."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import HTMLResponse, StreamingResponse
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from server import db, orders, shop_codes
from server.auth import Credentials, ManagerDep, StallAuth
from server.deps import SessionDep, SettingsDep, write_lock
from server.feed import etag_matches
from server.fields import STALL_PATTERN
from server.guard import GuardedRoute, errors
from server.order_watch import OrderWatch
from server.ratelimit import RateLimits
from server.refusals import as_http
from server.routes import manage_orders
from server.routes.manage_common import CSP
from server.routes.pages import templates
from server.routes.stats import Day, refused_as_422
from server.sessions import load_secret
from server.shop_codes import CodeSender
from server.stats import check_day, local_today

router = APIRouter(tags=["orders"], route_class=GuardedRoute)

SHOP_COOKIE = "wm_shop"
#: The code sent to her phone, pending (server.shop_codes): its HMAC, never the code.
CODE_COOKIE = "wm_shop_code"
#: A stall's long poll answers at a change or after this many seconds.
MAX_WAIT_S = 25
#: The shopper's live page: a keep-alive comment this often.
KEEPALIVE_S = 15.0

OrderId = Annotated[int, Path(ge=1, le=2**31 - 1)]


# -- the parts the routes share, made once per app --------------------------------------------
@dataclass
class Shop:
    secret: str
    cookies: URLSafeTimedSerializer
    limits: RateLimits
    watch: OrderWatch
    codes: URLSafeTimedSerializer  # the pending code's cookie: another salt, never a session
    sender: CodeSender
    code_sends: RateLimits  # codes sent per phone and per address
    code_tries: RateLimits  # codes tried per phone (sign-ins per address count in ``limits``)


def shop(request: Request) -> Shop:
    state = request.app.state
    found: Shop | None = getattr(state, "shop", None)
    if found is None:
        raise RuntimeError("server.routes.orders.install was not called")
    return found


def install(app: Any, watch: OrderWatch) -> None:
    """The shop's secret (the server's, kept in the database), cookies, rate limits and the
    order watch (``server.app.create_app`` makes it: its PostgreSQL listener hears the other
    processes' order changes)."""
    settings = app.state.settings
    secret = load_secret(app.state.sessionmaker)
    sender = CodeSender.parse(settings.shop_code_sender)
    app.state.shop = Shop(secret, URLSafeTimedSerializer(secret, salt="wetmarket.shop.session"),
                          RateLimits(settings.order_rate_phone, settings.order_rate_addr), watch,
                          URLSafeTimedSerializer(secret, salt="wetmarket.shop.code"), sender,
                          RateLimits(settings.shop_code_rate, settings.order_rate_addr),
                          RateLimits(settings.shop_code_tries, settings.order_rate_addr))


@dataclass(frozen=True, slots=True)
class Shopper:
    key: str
    masked: str


def shopper(request: Request) -> Shopper:
    """The signed-in shopper (her session cookie), else 401."""
    value = request.cookies.get(SHOP_COOKIE)
    if value:
        try:
            data: Any = shop(request).cookies.loads(value, max_age=request.app.state.settings.shop_session_s)
        except BadSignature:
            data = None
        if isinstance(data, dict) and isinstance(data.get("k"), str) and isinstance(data.get("m"), str):
            return Shopper(data["k"], data["m"])
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, "请先用手机号登录 / sign in with your phone "
                        "number first")


ShopperDep = Annotated[Shopper, Depends(shopper)]


# -- bodies and answers ---------------------------------------------------------------------
class CodeAsk(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: str = Field(min_length=11, max_length=16, description="mainland mobile number, 11 digits")


class CodeSent(BaseModel):
    phone: str = Field(description="masked: 138****1234")
    expires_s: int = Field(description="the code is good for this many seconds")
    shown_code: str | None = Field(None, description="the code itself, only where the market shows it "
                                                     "on the page instead of sending it "
                                                     "(shop_code_sender=display)")


class SignIn(CodeAsk):
    code: str = Field(pattern=r"^[0-9]{6}$", description="the 6-digit code sent to the phone")


class Me(BaseModel):
    phone: str = Field(description="masked: 138****1234")


class OrderLineOut(BaseModel):
    line_no: int
    plu: str
    name: str
    name_en: str
    price_unit: str
    unit_price_fen: int
    est_weight_g: int | None
    quantity: int | None
    est_amount_fen: int
    state: str  # pending, accepted, declined, weighed, missing
    final_weight_g: int | None
    final_quantity: int | None
    final_amount_fen: int | None
    over_tolerance: bool


class OrderOut(BaseModel):
    id: int
    stall_id: str
    stall_name: str
    state: str
    state_zh: str
    state_en: str
    pickup_code: str | None = Field(description="the shopper's code to collect it with; null in the stall's "
                                                "view (the vendor types what the shopper shows)")
    slot_start: str
    slot_end: str
    note: str | None
    estimate_fen: int
    final_fen: int | None
    tolerance_pct: int
    partly_declined: bool
    over_tolerance: bool
    sale_id: str | None
    trace_code: str | None
    payment: str | None
    cancel_reason: str | None
    placed_at: str
    accepted_at: str | None
    weighing_at: str | None
    ready_at: str | None
    picked_up_at: str | None
    cancelled_at: str | None
    stall_online: bool | None
    lines: list[OrderLineOut]
    phone_masked: str | None = None


class StallOrders(BaseModel):
    stall_id: str
    open: bool = Field(description="whether the stall takes online orders now")
    tolerance_pct: int
    orders: list[OrderOut]


class ShopItem(BaseModel):
    plu: str
    name: str
    name_en: str
    category: str
    price_unit: str
    unit_price_fen: int = Field(description="the price now: a current special's, else the regular")
    regular_price_fen: int
    special_title: str | None
    special_ends_at: str | None
    origin: str | None
    inspection: str | None = Field(description="the latest rapid test: pass, fail or null")
    orderable: bool
    why_not: str | None


class ShopStall(BaseModel):
    stall_id: str
    name: str
    open: bool
    online: bool
    items: list[ShopItem]


class ShopStallSummary(BaseModel):
    stall_id: str
    name: str
    open: bool = Field(description="whether the stall takes online orders now")
    online: bool = Field(description="heard from within the last 90 s")
    items: int = Field(description="how many items it prices")


class Slot(BaseModel):
    start: str
    end: str


class Slots(BaseModel):
    slots: list[Slot]
    lead_min: int
    slot_min: int


class Accept(BaseModel):
    model_config = ConfigDict(extra="forbid")

    declined: list[Annotated[int, Field(ge=1, le=orders.MAX_LINES)]] = Field(
        default_factory=list, max_length=orders.MAX_LINES, description="line numbers the stall cannot supply")


class PickedUp(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payment: orders.Payment = Field(description="how the shopper paid: cash or qr (a QR payment)")
    pickup_code: str = Field(pattern=r"^[0-9]{4,8}$",
                             description="the pickup code the shopper's order page shows, as she gave it")


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=200)


class DeskBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    open: bool


class OnlineShare(BaseModel):
    day: str
    online_sales: int
    online_fen: int
    sales: int
    total_fen: int
    share_pct: float | None


def _out(session: SessionDep, request: Request, order: db.Order, *, for_stall: bool = False) -> OrderOut:
    names = orders.stall_names(session, [order.stall_id])
    online = orders.stall_online(session, request.app.state.contacts.peek(), [order.stall_id])
    return OrderOut(**orders.to_json(order, names.get(order.stall_id, ""), request.app.state.settings.tz,
                                     online=online[order.stall_id], for_stall=for_stall))


def _many(session: SessionDep, request: Request, rows: list[db.Order], *,
          for_stall: bool = False) -> list[OrderOut]:
    names = orders.stall_names(session, [o.stall_id for o in rows])
    online = orders.stall_online(session, request.app.state.contacts.peek(), names)
    tz = request.app.state.settings.tz
    return [OrderOut(**orders.to_json(o, names.get(o.stall_id, ""), tz, online=online.get(o.stall_id),
                                      for_stall=for_stall)) for o in rows]


def _allowed_slots(request: Request) -> list[dt.datetime]:
    s = request.app.state.settings
    return orders.slots(s.tz, s.market_opens, s.market_closes, lead_min=s.order_lead_min,
                        slot_min=s.order_slot_min, days=s.order_days)


# -- the shop's public part --------------------------------------------------------------------
@router.get("/shop", response_class=HTMLResponse)
def shop_page(request: Request, settings: SettingsDep) -> HTMLResponse:
    """The shopper's ordering page (phone-first; Chinese, ``?lang=en`` for English)."""
    # The page's script and style are files of its own: no inline code may run on it.
    return templates.TemplateResponse(request, "shop.html", {"market": settings.market_name},
                                      headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP,
                                               "Referrer-Policy": "same-origin"})


@router.get("/api/v1/shop/stalls", response_model=list[ShopStallSummary])
def shop_stalls(request: Request, session: SessionDep) -> list[ShopStallSummary]:
    """Every stall: whether it takes orders, whether it is online, how many items it prices."""
    now = dt.datetime.now(dt.UTC)
    stalls = list(session.execute(select(db.Stall.stall_id, db.Stall.name).order_by(db.Stall.stall_id)))
    online = orders.stall_online(session, request.app.state.contacts.peek(), [s for s, _ in stalls], now)
    desks = dict(session.execute(select(db.OrderDesk.stall_id, db.OrderDesk.open)).all())
    counts = dict(session.execute(
        select(db.StallPrice.stall_id, func.count()).join(db.Item, db.Item.plu == db.StallPrice.plu)
        .where(db.Item.active.is_(True)).group_by(db.StallPrice.stall_id)).all())
    return [ShopStallSummary(stall_id=sid, name=name, open=desks.get(sid, True), online=online[sid],
                             items=counts.get(sid, 0)) for sid, name in stalls]


@router.get("/api/v1/shop/stalls/{stall_id}", response_model=ShopStall, responses=errors(404))
def shop_stall(stall_id: Annotated[str, Path(pattern=STALL_PATTERN)], request: Request,
               session: SessionDep) -> ShopStall:
    """One stall's priced items: the price now with its legal unit, a current special, the
    latest rapid test (a failed batch cannot be ordered), whether the stall takes orders."""
    now = dt.datetime.now(dt.UTC)
    tz = request.app.state.settings.tz
    stall = session.get(db.Stall, stall_id)
    if stall is None:
        raise HTTPException(404, f"没有摊位 {stall_id} / no stall {stall_id}")
    online = orders.stall_online(session, request.app.state.contacts.peek(), [stall_id], now)
    tests = orders.latest_tests(session, stall_id)
    items = []
    for item, price, regular, special in orders.stall_prices(session, stall_id, now).values():
        test = tests.get((stall_id, item.plu))
        failed = test is not None and test.result == "fail"
        on_special = special is not None and price < regular
        items.append(ShopItem(
            plu=item.plu, name=item.name, name_en=item.name_en, category=item.category,
            price_unit=item.price_unit, unit_price_fen=price, regular_price_fen=regular,
            special_title=(special.title or "特价") if special is not None and on_special else None,
            special_ends_at=special.ends_at.astimezone(tz).isoformat()
            if special is not None and on_special else None,
            origin=item.origin, inspection=test.result if test is not None else None,
            orderable=not failed,
            why_not="农残快检不合格，禁止销售 / failed the rapid test: not for sale" if failed else None))
    return ShopStall(stall_id=stall_id, name=stall.name, open=orders.desk_open(session, stall_id),
                     online=online[stall_id], items=items)


@router.get("/api/v1/shop/slots", response_model=Slots)
def shop_slots(request: Request) -> Slots:
    """The pickup slots a shopper may choose now, in market time."""
    s = request.app.state.settings
    length = dt.timedelta(minutes=s.order_slot_min)
    return Slots(slots=[Slot(start=t.isoformat(), end=(t + length).isoformat())
                        for t in _allowed_slots(request)],
                 lead_min=s.order_lead_min, slot_min=s.order_slot_min)


def _cookie(request: Request, response: Response, name: str, value: str | None, max_age: int = 0) -> None:
    """Set (or, with ``value`` None, drop) one of the shop's cookies: HttpOnly, SameSite=Strict,
    Secure over https; the order calls need no CSRF token because of it."""
    opts: dict[str, Any] = {"path": "/", "httponly": True, "samesite": "strict",
                            "secure": request.url.scheme == "https"}
    if value is None:
        response.delete_cookie(name, **opts)
    else:
        response.set_cookie(name, value, max_age=max_age, **opts)


@router.post("/api/v1/shop/code", response_model=CodeSent,
             responses=errors(400, 413, 429, 503, e429="Too many codes for this phone or address",
                              e503="The code could not be sent: try again"))
def send_code(body: CodeAsk, request: Request, response: Response) -> CodeSent:
    """Send a one-time 6-digit code to the phone (SMS, through the market's gateway), good for 5
    minutes; its proof rides in a short-lived cookie of its own (server/shop_codes.py)."""
    s = shop(request)
    s.code_sends.address(request)
    with as_http():
        phone = orders.check_phone(body.phone)
    key = orders.phone_key(s.secret, phone)
    s.code_sends.phone(key)
    code, pending = shop_codes.issue(s.secret, key)
    try:
        s.sender.send(phone, code)
    except shop_codes.CodeSendFailed:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "验证码发送失败，请稍后再试 / the code "
                            "could not be sent: try again in a minute") from None
    _cookie(request, response, CODE_COOKIE, s.codes.dumps(pending), shop_codes.CODE_TTL_S)
    return CodeSent(phone=orders.mask_phone(phone), expires_s=shop_codes.CODE_TTL_S,
                    shown_code=code if s.sender.display else None)


@router.post("/api/v1/shop/sign-in", response_model=Me,
             responses=errors(400, 401, 413, 429, e401="Not the code sent to this phone, or expired",
                              e429="Too many tries for this phone or address"))
def sign_in(body: SignIn, request: Request, response: Response) -> Me:
    """Sign in with a phone number and the code sent to it: a signed session cookie (HttpOnly,
    SameSite=Strict).  Tries are counted per phone, a wrong code among them."""
    s = shop(request)
    s.limits.address(request)
    with as_http():
        phone = orders.check_phone(body.phone)
    key, masked = orders.phone_key(s.secret, phone), orders.mask_phone(phone)
    s.code_tries.phone(key)
    try:
        pending = s.codes.loads(request.cookies.get(CODE_COOKIE, ""), max_age=shop_codes.CODE_TTL_S)
    except BadSignature:
        pending = None
    if not shop_codes.check(s.secret, pending, key, body.code):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "验证码不对或已过期，请重新获取 / that is not "
                            "the code sent to this phone, or it expired: ask for a new one")
    _cookie(request, response, CODE_COOKIE, None)
    _cookie(request, response, SHOP_COOKIE, s.cookies.dumps({"k": key, "m": masked}),
            request.app.state.settings.shop_session_s)
    return Me(phone=masked)


@router.post("/api/v1/shop/sign-out", status_code=204)
def sign_out(request: Request) -> Response:
    response = Response(status_code=204)
    _cookie(request, response, SHOP_COOKIE, None)
    return response


@router.get("/api/v1/shop/me", response_model=Me, responses=errors(401))
def me(who: ShopperDep) -> Me:
    return Me(phone=who.masked)


# -- the shopper's orders --------------------------------------------------------------------
@router.post("/api/v1/orders", status_code=status.HTTP_201_CREATED, response_model=OrderOut,
             responses=errors(400, 401, 404, 409, 413, 429, e404="No such stall or item",
                              e409="The stall is closed for orders, does not sell the item, or its "
                              "batch failed the rapid test", e429="Too many orders from this phone "
                              "or address"))
def place_order(body: orders.OrderIn, request: Request, session: SessionDep, who: ShopperDep) -> OrderOut:
    """Order at one stall: each line an estimated weight or a count, a pickup slot.  Answers
    the order with its pickup code; it waits for the stall (``placed``) until the stall accepts."""
    s = shop(request)
    s.limits.address(request)
    s.limits.phone(who.key)
    settings = request.app.state.settings
    with write_lock(request), as_http():
        order = orders.place(session, body, key=who.key, masked=who.masked, tz=settings.tz,
                             allowed_slots=_allowed_slots(request), slot_min=settings.order_slot_min,
                             tolerance_pct=settings.order_tolerance_pct)
        session.commit()
    return _out(session, request, order)


@router.get("/api/v1/orders", response_model=list[OrderOut], responses=errors(401))
def my_orders(request: Request, session: SessionDep, who: ShopperDep) -> list[OrderOut]:
    """The signed-in shopper's orders, newest first (her own only)."""
    return _many(session, request, orders.list_for_phone(session, who.key))


@router.get("/api/v1/orders/{order_id}", response_model=OrderOut, responses=errors(401, 404))
def my_order(order_id: OrderId, request: Request, session: SessionDep, who: ShopperDep) -> OrderOut:
    order = orders.read_order(session, order_id)
    if order is None or order.phone_key != who.key:
        raise HTTPException(404, f"没有订单 {order_id} / no order {order_id}")
    return _out(session, request, order)


@router.post("/api/v1/orders/{order_id}/cancel", response_model=OrderOut,
             responses=errors(401, 404, 409, 429, e409="The stall accepted it already"))
def cancel_mine(order_id: OrderId, request: Request, session: SessionDep, who: ShopperDep) -> OrderOut:
    """The shopper cancels an order the stall has not accepted yet."""
    s = shop(request)
    s.limits.address(request)
    s.limits.phone(who.key)
    with write_lock(request), as_http():
        order = orders.cancel(session, order_id, reason="顾客取消 / cancelled by the shopper",
                              who="shopper", phone=who.key)
        session.commit()
    return _out(session, request, order)


@router.get("/api/v1/shop/events", response_class=StreamingResponse, responses={
    200: {"description": "Server-Sent Events: `orders` with the shopper's orders (as GET "
                         "/api/v1/orders) at once and after every change of one of them",
          "content": {"text/event-stream": {}}}, **errors(401)})
async def my_events(request: Request, who: ShopperDep) -> StreamingResponse:
    """The shopper's orders, live."""
    watch = shop(request).watch
    maker = request.app.state.sessionmaker

    def read() -> str:
        with maker() as session:
            rows = _many(session, request, orders.list_for_phone(session, who.key))
        return json.dumps([o.model_dump() for o in rows], ensure_ascii=False)

    async def stream() -> AsyncIterator[str]:
        waiter = watch.subscribe(phone_key=who.key)
        try:
            yield "retry: 2000\n\n"
            sent = None
            while not await request.is_disconnected():
                waiter.event.clear()
                body = await run_in_threadpool(read)
                if body != sent:
                    sent = body
                    yield f"event: orders\ndata: {body}\n\n"
                try:
                    await asyncio.wait_for(waiter.event.wait(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
        finally:
            watch.unsubscribe(waiter)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- the stall's side ------------------------------------------------------------------------
def _stall_id(request: Request) -> str:
    stall: StallAuth = request.state.stall  # set by the guard's token check (server.auth)
    return stall.stall_id


def _stall_orders(request: Request) -> StallOrders:
    stall_id = _stall_id(request)
    with request.app.state.sessionmaker() as session:
        rows = _many(session, request, orders.open_for_stall(session, stall_id), for_stall=True)
        open_ = orders.desk_open(session, stall_id)
    return StallOrders(stall_id=stall_id, open=open_, orders=rows,
                       tolerance_pct=request.app.state.settings.order_tolerance_pct)


def _tag(body: str) -> str:
    return '"orders-' + hashlib.sha256(body.encode()).hexdigest()[:24] + '"'


@router.get("/api/v1/stall/orders", response_model=StallOrders, responses={
    200: {"description": "The stall's open orders; the ETag header names this answer",
          "headers": {"ETag": {"schema": {"type": "string"}}}},
    304: {"description": "Unchanged since the ETag sent as If-None-Match (no body)"}, **errors(401)})
async def stall_orders(
    request: Request, cred: Credentials,
    wait: Annotated[int, Query(ge=0, le=MAX_WAIT_S, description=(
        "long poll: with a current If-None-Match, answer when an order changes or after this "
        "many seconds (304)"))] = 0,
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    """This stall's open orders (placed, accepted, weighing, ready), oldest first, and whether
    it takes orders; a long poll the stall keeps open."""
    assert cred is not None  # the guard answered 401 without one
    watch = shop(request).watch
    waiter = watch.subscribe(stall_id=_stall_id(request))
    try:
        answer = await run_in_threadpool(_stall_orders, request)
        body = answer.model_dump_json()
        if etag_matches(if_none_match, _tag(body)) and wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.event.wait(), wait)
            answer = await run_in_threadpool(_stall_orders, request)
            body = answer.model_dump_json()
    finally:
        watch.unsubscribe(waiter)
    tag = _tag(body)
    if etag_matches(if_none_match, tag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": tag})
    return Response(body, media_type="application/json", headers={"ETag": tag, "Cache-Control": "no-store"})


def _stall_change(request: Request, session: SessionDep, change: Any) -> OrderOut:
    with write_lock(request), as_http():
        order = change()
        session.commit()
    return _out(session, request, order, for_stall=True)


@router.post("/api/v1/stall/orders/{order_id}/accept", response_model=OrderOut,
             responses=errors(400, 401, 404, 409, 413, e409="Not waiting to be accepted"))
def stall_accept(order_id: OrderId, body: Accept, request: Request, session: SessionDep,
                 cred: Credentials) -> OrderOut:
    """Accept the order, declining the lines the stall cannot supply (all declined: cancelled)."""
    return _stall_change(request, session, lambda: orders.accept(session, order_id, _stall_id(request),
                                                                 body.declined))


@router.post("/api/v1/stall/orders/{order_id}/weighing", response_model=OrderOut,
             responses=errors(401, 404, 409, e409="Not accepted, or over"))
def stall_weighing(order_id: OrderId, request: Request, session: SessionDep, cred: Credentials) -> OrderOut:
    """The vendor starts weighing the order at the scale."""
    return _stall_change(request, session,
                         lambda: orders.start_weighing(session, order_id, _stall_id(request)))


@router.post("/api/v1/stall/orders/{order_id}/picked-up", response_model=OrderOut,
             responses=errors(400, 401, 404, 409, 413, e409="Not ready (its sale not stored yet)"))
def stall_picked_up(order_id: OrderId, body: PickedUp, request: Request, session: SessionDep,
                    cred: Credentials) -> OrderOut:
    """The shopper collected the order, with its pickup code, and paid (cash or QR payment, recorded)."""
    return _stall_change(request, session, lambda: orders.picked_up(session, order_id, _stall_id(request),
                                                                    body.payment, body.pickup_code))


@router.post("/api/v1/stall/orders/{order_id}/cancel", response_model=OrderOut,
             responses=errors(400, 401, 404, 409, 413, e409="Ready, collected or cancelled already"))
def stall_cancel(order_id: OrderId, body: CancelBody, request: Request, session: SessionDep,
                 cred: Credentials) -> OrderOut:
    """The stall cannot fulfil the order (before its sale)."""
    return _stall_change(request, session, lambda: orders.cancel(
        session, order_id, reason=body.reason, who=f"stall:{_stall_id(request)}",
        stall_id=_stall_id(request)))


@router.put("/api/v1/stall/orders-desk", response_model=DeskBody, responses=errors(400, 401, 413))
def stall_desk(body: DeskBody, request: Request, session: SessionDep, cred: Credentials) -> DeskBody:
    """Pause or resume online orders at this stall (a paused stall is shown closed)."""
    with write_lock(request):
        desk = orders.set_desk(session, _stall_id(request), body.open, f"stall:{_stall_id(request)}")
        session.commit()
    return DeskBody(open=desk.open)


# -- the manager's ---------------------------------------------------------------------------
@router.get("/api/v1/orders-all", response_model=list[OrderOut], responses=errors(401))
def all_orders(request: Request, session: SessionDep, _: ManagerDep,
               state: Annotated[orders.State | None, Query()] = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[OrderOut]:
    """Every order, newest first (the manager's list; phone numbers masked)."""
    q = session.query(db.Order).order_by(db.Order.id.desc())
    if state is not None:
        q = q.filter(db.Order.state == state)
    return _many(session, request, list(q.limit(limit)), for_stall=True)


@router.get("/api/v1/stats/online-share", response_model=OnlineShare)
def online_share(session: SessionDep, settings: SettingsDep, day: Day = None) -> OnlineShare:
    """A market day's sales that fulfilled online orders against all its sales (their count and
    amount; read from the orders and the day rollup, never from raw sales)."""
    with refused_as_422():
        when = check_day(day) if day is not None else local_today(settings.tz)
    return OnlineShare(**orders.online_share(session, when))


# The manager's page of orders, /manage/orders (server.routes.manage_orders).
router.include_router(manage_orders.router)
