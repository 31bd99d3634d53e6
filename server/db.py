"""Tables and engine of the market server.

Raw sales are stored as received (``sales`` + ``sale_lines``) and folded, in the
same transaction, into rollups (``stall_hour``, ``item_day``) so that the big
screen reads a few rows instead of scanning raw sales.

Every point in time is stored in UTC and read back aware, in UTC, on SQLite too
(``UTCDateTime``); pages and APIs show it in the market's zone (``Settings.tz``),
so nothing depends on the server machine's ``TZ``.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    TypeDecorator,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from server import ConfigError

logger = logging.getLogger(__name__)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An instant, stored in UTC and read back aware (UTC) on SQLite and PostgreSQL alike.

    SQLite has no time zone type: SQLAlchemy writes the wall time and drops the offset,
    so a sale sold at 11:30:53+08:00 came back as a naive 11:30:53, which the trace page
    then took for the server machine's local time.  PostgreSQL keeps the instant but
    answers in its session's zone.  Here both write UTC and read UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:  # a bug in our code: never guess a zone
            raise ValueError(f"refusing to store {value.isoformat()} without its UTC offset")
        utc = value.astimezone(dt.UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime}


class Meta(Base):
    """Server-wide values kept in the database (e.g. the generated admin token's hash)."""

    __tablename__ = "server_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Stall(Base):
    __tablename__ = "stalls"

    stall_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    public_key: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Sale(Base):
    __tablename__ = "sales"
    # A stall's receipt numbers: the chain check and the gap alerts look sales up by them,
    # and it serves every look-up by stall (no index on stall_id alone).
    __table_args__ = (Index("ux_sales_stall_receipt", "stall_id", "receipt_no", unique=True),)

    sale_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    stall_id: Mapped[str] = mapped_column(ForeignKey("stalls.stall_id"))
    receipt_no: Mapped[int] = mapped_column(Integer)
    trace_code: Mapped[str] = mapped_column(String(20), unique=True)
    sold_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    local_day: Mapped[dt.date] = mapped_column(Date, index=True)
    total_fen: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(256))
    verified: Mapped[bool] = mapped_column(Boolean)
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    raw: Mapped[dict[str, object]] = mapped_column(JSON)
    #: Indexed: the big screen shows the latest sales received.
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)

    lines: Mapped[list[SaleLine]] = relationship(
        back_populates="sale", order_by="SaleLine.idx", cascade="all, delete-orphan"
    )


class SaleLine(Base):
    __tablename__ = "sale_lines"

    sale_id: Mapped[str] = mapped_column(ForeignKey("sales.sale_id"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    plu: Mapped[str] = mapped_column(String(16), index=True)
    name: Mapped[str] = mapped_column(String(64))
    weight_g: Mapped[int | None] = mapped_column(Integer)
    quantity: Mapped[int | None] = mapped_column(Integer)
    unit_price_fen: Mapped[int] = mapped_column(BigInteger)
    price_unit: Mapped[str] = mapped_column(String(8))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    batch_code: Mapped[str | None] = mapped_column(String(32))

    sale: Mapped[Sale] = relationship(back_populates="lines")


class Refund(Base):
    """A refunded line of a stored sale (at most once per line)."""

    __tablename__ = "refunds"

    sale_id: Mapped[str] = mapped_column(ForeignKey("sales.sale_id"), primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based, as on the receipt
    stall_id: Mapped[str] = mapped_column(String(16), index=True)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(200))
    operator: Mapped[str] = mapped_column(String(64))
    refunded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    local_day: Mapped[dt.date] = mapped_column(Date, index=True)


class StallHour(Base):
    """Sales per stall per local hour."""

    __tablename__ = "rollup_stall_hour"

    local_day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    hour: Mapped[int] = mapped_column(Integer, primary_key=True)
    stall_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    sales: Mapped[int] = mapped_column(Integer, default=0)
    total_fen: Mapped[int] = mapped_column(BigInteger, default=0)


class ItemDay(Base):
    """Weight, amount and price range per item per local day (price trends)."""

    __tablename__ = "rollup_item_day"

    local_day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    plu: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    #: The English name the last line carried (``name_en``, added by stalls), for the big screen.
    name_en: Mapped[str | None] = mapped_column(String(64))
    lines: Mapped[int] = mapped_column(Integer, default=0)
    weight_g: Mapped[int] = mapped_column(BigInteger, default=0)
    quantity: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_fen: Mapped[int] = mapped_column(BigInteger, default=0)


class StallDay(Base):
    """Sales per stall per local day: rankings by day, week and month read these, not hours."""

    __tablename__ = "rollup_stall_day"

    local_day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    stall_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    sales: Mapped[int] = mapped_column(Integer, default=0)
    total_fen: Mapped[int] = mapped_column(BigInteger, default=0)


class StallItemDay(Base):
    """What one stall sold of one item in a local day: its real average price (alerts)."""

    __tablename__ = "rollup_stall_item_day"

    local_day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    stall_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    plu: Mapped[str] = mapped_column(String(16), primary_key=True)
    lines: Mapped[int] = mapped_column(Integer, default=0)
    weight_g: Mapped[int] = mapped_column(BigInteger, default=0)
    quantity: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_fen: Mapped[int] = mapped_column(BigInteger, default=0)


# ---- market management (调价管理, 农残快检, 特价, managers, alerts) ---------------------------


class Item(Base):
    """The market catalogue: one row per PLU, the same code at every stall."""

    __tablename__ = "items"

    plu: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))  # Chinese, as on receipts
    name_en: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(32), index=True)
    #: ``kg``, ``500g`` or ``piece``: the legal units of 明码标价, never 斤.
    price_unit: Mapped[str] = mapped_column(String(8))
    picture: Mapped[str | None] = mapped_column(String(256))
    origin: Mapped[str | None] = mapped_column(String(64))
    #: The recognizer's label for this item (``model/weights/recognizer.json``), if any.
    label: Mapped[str | None] = mapped_column(String(64))
    #: The market's price cap per ``price_unit`` in 分; a stall price above it is refused.
    cap_fen: Mapped[int | None] = mapped_column(BigInteger)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class StallPrice(Base):
    """A stall's current price of a catalogue item, per the item's ``price_unit``."""

    __tablename__ = "stall_prices"

    stall_id: Mapped[str] = mapped_column(ForeignKey("stalls.stall_id"), primary_key=True)
    plu: Mapped[str] = mapped_column(ForeignKey("items.plu"), primary_key=True, index=True)
    unit_price_fen: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class PriceChange(Base):
    """Every change of a stall price or a market cap, kept for ever: who, when, old, new, why.

    Append-only: rows are never updated or deleted.  ``stall_id`` is NULL for a cap.
    """

    __tablename__ = "price_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    plu: Mapped[str] = mapped_column(String(16), index=True)
    stall_id: Mapped[str | None] = mapped_column(String(16), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # "price" or "cap"
    #: The item's unit when the change was made: ``old_fen`` and ``new_fen`` are per this unit
    #: (an item's unit changes only while no stall price or cap holds a value in the old one).
    price_unit: Mapped[str] = mapped_column(String(8))
    old_fen: Mapped[int | None] = mapped_column(BigInteger)
    new_fen: Mapped[int | None] = mapped_column(BigInteger)
    #: ``manager:<username>``, ``stall:<stall_id>`` or ``admin`` (the bootstrap token).
    who: Mapped[str] = mapped_column(String(64))
    why: Mapped[str] = mapped_column(String(200))


class Inspection(Base):
    """One rapid test (农残快检) of a batch at a stall; a failed batch is blocked for sale."""

    __tablename__ = "inspections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_code: Mapped[str] = mapped_column(String(32), index=True)
    plu: Mapped[str] = mapped_column(String(16))
    stall_id: Mapped[str] = mapped_column(ForeignKey("stalls.stall_id"), index=True)
    method: Mapped[str] = mapped_column(String(64))  # e.g. 酶抑制率法 (GB/T 5009.199)
    #: Enzyme inhibition in tenths of a percent (0..1000): 50.0 % is 500.
    inhibition_permille: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[str] = mapped_column(String(8))  # "pass" or "fail"
    tester: Mapped[str] = mapped_column(String(64))
    tested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    local_day: Mapped[dt.date] = mapped_column(Date, index=True)
    recorded_by: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(String(200))


class Promotion(Base):
    """A special (特价): a stall's price of an item inside a time window only."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stall_id: Mapped[str] = mapped_column(ForeignKey("stalls.stall_id"), index=True)
    plu: Mapped[str] = mapped_column(ForeignKey("items.plu"))
    special_price_fen: Mapped[int] = mapped_column(BigInteger)
    starts_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    ends_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    title: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    cancelled_by: Mapped[str | None] = mapped_column(String(64))


class Manager(Base):
    """A market manager's account for ``/manage``; the password is stored as an argon2 hash."""

    __tablename__ = "managers"

    username: Mapped[str] = mapped_column(String(32), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(64))
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(64))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Part of every session cookie (server.sessions): bumped when the account is disabled or its
    #: password changes, so every session signed before is refused at its next request.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)


class SignInFailure(Base):
    """Failed sign-ins to ``/manage`` per username and per client address: the lockout state,
    kept in the database so a restart (or another server process) does not reset it."""

    __tablename__ = "sign_in_failures"

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)  # "user" or "addr"
    subject: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class StallContact(Base):
    """When a stall last reached the server with its token (alerts: a stall gone silent)."""

    __tablename__ = "stall_contact"

    stall_id: Mapped[str] = mapped_column(ForeignKey("stalls.stall_id"), primary_key=True)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class ScaleEvent(Base):
    """A stall scale's audit log entry (zero, tare, calibration, error), uploaded by the stall.

    The log (``firmware_bridge.audit``) numbers its entries 1, 2, 3... (``seq``: unique per
    stall, a gap is an alert) and chains each to the one before by hash; ``counter`` is the
    scale's audit counter, which only a calibration raises, so many entries share one.
    """

    __tablename__ = "scale_events"

    stall_id: Mapped[str] = mapped_column(ForeignKey("stalls.stall_id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    counter: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(String(400))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    #: The entry's chain: ``hash`` of the entry before (64 zeros for the first), its own hash.
    prev: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    #: ``bad_hash`` (the entry was altered), ``chain_mismatch`` (does not follow the stored one
    #: before it), ``counter_back``; stored all the same, never dropped.
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Alert(Base):
    """Something a manager must look at; ``key`` makes raising the same alert twice a no-op."""

    __tablename__ = "alerts"
    #: The open alerts (acknowledged_at NULL), newest first: the manager pages' list and counts.
    __table_args__ = (Index("ix_alerts_open", "acknowledged_at", "raised_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)
    #: price_high, receipt_gap, bad_chain, bad_signature, scale_event, stall_silent, inspection_failed
    kind: Mapped[str] = mapped_column(String(24), index=True)
    stall_id: Mapped[str | None] = mapped_column(String(16), index=True)
    plu: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(String(400))
    raised_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))


class FairCheck(Base):
    """A shopper's re-weighing of a receipt at the market's fair scale (公平秤), recorded
    whatever it found (``server.fair_checks``); ``check_id`` (the scale's) makes a check sent
    twice (its answer lost, or queued while the server was away) one row."""

    __tablename__ = "fair_checks"
    __table_args__ = (
        Index("ix_fair_checks_day_stall", "local_day", "stall_id"),  # complaint rate per stall
        Index("ix_fair_checks_checked_at", "checked_at"),  # the manager's newest first
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    check_id: Mapped[str] = mapped_column(String(36), unique=True)
    checked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    local_day: Mapped[dt.date] = mapped_column(Date)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: As scanned (a forged one is kept as it came); the sale and its stall when it is one.
    trace_code: Mapped[str] = mapped_column(String(64))
    sale_id: Mapped[str | None] = mapped_column(String(36))
    stall_id: Mapped[str | None] = mapped_column(String(16))
    #: 1-based as on the receipt; NULL: the receipt's whole weight.
    line_no: Mapped[int | None] = mapped_column(Integer)
    receipt_g: Mapped[int | None] = mapped_column(Integer)
    measured_g: Mapped[int] = mapped_column(Integer)
    #: measured minus receipt (negative: short); NULL when there is no receipt weight.
    diff_g: Mapped[int | None] = mapped_column(Integer)
    #: the legal tolerance in milligrams (an MPE of 0.5 e is 2.5 g: exact in mg)
    tolerance_mg: Mapped[int | None] = mapped_column(Integer)
    e_g: Mapped[int] = mapped_column(Integer)
    #: ok, short, refunded, forged, unverified
    verdict: Mapped[str] = mapped_column(String(16))
    alert_id: Mapped[int | None] = mapped_column(Integer)


class SharedItem(Base):
    """An item taught at one stall and offered to the others (``edge.gallery_share``): the
    signed document as received, the fields the listings filter on, and its withdrawal."""

    __tablename__ = "shared_items"
    __table_args__ = (
        # an upload sent twice (its answer lost) is stored once
        Index("ux_shared_items_stall_item", "stall_id", "item_id", unique=True),
        # a stall asks for its model's items, in order
        Index("ix_shared_items_model", "model", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stall_id: Mapped[str] = mapped_column(ForeignKey("stalls.stall_id"))
    item_id: Mapped[str] = mapped_column(String(36))
    label: Mapped[str] = mapped_column(String(64))
    plu: Mapped[str | None] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    dim: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)
    doc: Mapped[dict[str, object]] = mapped_column(JSON)
    taught_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    withdrawn_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    withdrawn_by: Mapped[str | None] = mapped_column(String(64))



# ---- online orders (线上买菜, issue 19): server.orders -----------------------------------------


class Order(Base):
    """A shopper's order at one stall: an estimate until the stall weighs it; its final
    amounts are those of the sale that fulfilled it (``sale_id``), to the 分."""

    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_stall_state", "stall_id", "state"),
        Index("ix_orders_phone", "phone_key", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stall_id: Mapped[str] = mapped_column(ForeignKey("stalls.stall_id"))
    #: HMAC of the phone number under the server secret: orders are found by it, the number
    #: itself is never stored (``phone_masked`` is what the stall and managers see).
    phone_key: Mapped[str] = mapped_column(String(64))
    phone_masked: Mapped[str] = mapped_column(String(16))
    #: placed, accepted, weighing, ready, picked_up, cancelled
    state: Mapped[str] = mapped_column(String(16))
    pickup_code: Mapped[str] = mapped_column(String(8))
    slot_start: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    slot_end: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(String(200))
    estimate_fen: Mapped[int] = mapped_column(BigInteger)
    final_fen: Mapped[int | None] = mapped_column(BigInteger)
    tolerance_pct: Mapped[int] = mapped_column(Integer)
    #: The sale that fulfilled the order: one, never two (``server.ingest`` refuses a second).
    sale_id: Mapped[str | None] = mapped_column(String(36), unique=True)
    trace_code: Mapped[str | None] = mapped_column(String(20))
    #: The market day of the fulfilling sale: the online share of a day's sales.
    local_day: Mapped[dt.date | None] = mapped_column(Date, index=True)
    payment: Mapped[str | None] = mapped_column(String(8))  # cash, qr
    cancel_reason: Mapped[str | None] = mapped_column(String(200))
    cancelled_by: Mapped[str | None] = mapped_column(String(64))
    placed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    accepted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    weighing_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ready_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    picked_up_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    lines: Mapped[list[OrderLine]] = relationship(
        back_populates="order", order_by="OrderLine.line_no", cascade="all, delete-orphan")


class OrderLine(Base):
    """One item of an order: an estimated weight (or a count), then what the scale weighed."""

    __tablename__ = "order_lines"

    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based
    plu: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    name_en: Mapped[str] = mapped_column(String(64))
    price_unit: Mapped[str] = mapped_column(String(8))
    #: The stall's price when ordered (a special inside its window): the estimate's price.
    unit_price_fen: Mapped[int] = mapped_column(BigInteger)
    est_weight_g: Mapped[int | None] = mapped_column(Integer)
    quantity: Mapped[int | None] = mapped_column(Integer)
    est_amount_fen: Mapped[int] = mapped_column(BigInteger)
    #: pending, accepted, declined, weighed, missing (accepted but not in the sale)
    state: Mapped[str] = mapped_column(String(12))
    final_weight_g: Mapped[int | None] = mapped_column(Integer)
    final_quantity: Mapped[int | None] = mapped_column(Integer)
    final_amount_fen: Mapped[int | None] = mapped_column(BigInteger)
    #: The weighed amount differs from the estimate by more than the order's tolerance.
    over_tolerance: Mapped[bool] = mapped_column(Boolean, default=False)

    order: Mapped[Order] = relationship(back_populates="lines")


class OrderDesk(Base):
    """Whether a stall takes online orders now (the vendor pauses and resumes them)."""

    __tablename__ = "order_desks"

    stall_id: Mapped[str] = mapped_column(ForeignKey("stalls.stall_id"), primary_key=True)
    open: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str] = mapped_column(String(64))


def make_engine(db_url: str, *, writer: bool = False) -> Engine:
    """The engine of ``db_url``; ``writer``: the group commit's own, on PostgreSQL with a plan
    made for each statement as the tables are now (below)."""
    url = db_url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    sqlite = url.startswith("sqlite")
    try:
        options: dict[str, Any] = {}
        if writer and not sqlite:
            # The writer's statements and the foreign-key checks they fire run thousands of
            # times a minute, so PostgreSQL keeps one generic plan of each, made while the
            # tables were small: a sequential scan of ``sale_keys``, kept as the table grows
            # until autovacuum next analyses it.  Measured on a new database, storing a batch
            # of 100 went from 5 ms to 90 ms over its first 12,000 sales.  A plan made for
            # each execution costs some planning and reads the indexes at any size.
            extra = make_url(url).query.get("options")
            extra = " ".join(extra) if isinstance(extra, tuple) else (extra or "")
            options["connect_args"] = {"options": f"{extra} -c plan_cache_mode=force_custom_plan".strip()}
            # One group is written at a time per process (server.groupcommit): one connection.
            options.update(pool_size=1, max_overflow=1)
        # Each upload, its group commit, the token check and the live figures hold a
        # connection for a moment: with the default 5 kept, a burst of stalls opened and
        # closed connections (SQLite's pragmas run again each time) on every request.  An
        # SQLite file cannot go away under the server: no ping before each use.
        engine = create_engine(url, **{"pool_pre_ping": not sqlite, "pool_size": 20, "max_overflow": 20,
                                       **options})
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(f"cannot use database {db_url!r}: {exc}") from exc
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # SQLAlchemy's documented pysqlite fix: the driver would BEGIN only before a
            # write and let a SAVEPOINT commit the transaction; we BEGIN ourselves
            # (_sqlite_begin), so savepoints nest as on PostgreSQL (ingest uses them).
            dbapi_conn.isolation_level = None
            # WAL lets the big screen read while stalls upload; FULL sync because an
            # acknowledged sale must survive a power cut.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN")

    return engine


def snapshot_maker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for what only reads and shows several figures side by side (the big screen,
    statistics, the export): every statement of a session's transaction reads one snapshot.

    PostgreSQL's default, READ COMMITTED, gives each statement its own: a sale committed
    between two statements of one read was in the second and not the first, so the big
    screen's recent sales showed a sale that its count of today's sales did not.  REPEATABLE
    READ gives the transaction one snapshot (and a transaction that only reads never fails on
    it; a streaming replica allows it too); READ ONLY refuses a write by mistake.  Both are
    attributes of the driver's connection, sent with the BEGIN: no round trip.  SQLite's
    deferred transaction (``_sqlite_begin``) already reads one snapshot from its first read on
    (WAL)."""
    if engine.dialect.name == "postgresql":
        engine = engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return sessionmaker(engine, expire_on_commit=False)


#: server_meta key that says how this database stores times (absent: written by older code).
TIME_STORAGE_KEY = "time_storage"
TIME_STORAGE_UTC = "utc"


def _naive_wall_time(value: dt.datetime) -> dt.datetime:
    """What older code wrote to SQLite: the value's own wall time, its offset dropped."""
    return value.replace(tzinfo=None)


def _migrate_sqlite_times(session: Session, tz: zoneinfo.ZoneInfo) -> None:
    """Rewrite the times of an SQLite file written before times were stored in UTC.

    Older code wrote each time's wall clock without its offset.  ``received_at`` and
    ``created_at`` were UTC already; ``sold_at`` was the stall's wall time and is
    recomputed exactly from the sale as received (``raw``); a refund's ``refunded_at``
    was the refund's wall time, whose offset was not kept: it is read in the market's
    zone, the zone a stall stamps refunds in.
    """
    if session.get(Meta, TIME_STORAGE_KEY) is not None:
        return
    sales = [{"sale_id": sale_id, "sold_at": dt.datetime.fromisoformat(str(raw["sold_at"]))}
             for sale_id, raw in session.execute(select(Sale.sale_id, Sale.raw))]
    if sales:
        session.execute(update(Sale), sales)
    # Read the stored wall times as they are (the type would label them UTC).
    refunds = [{"sale_id": sale_id, "line_no": line_no,
                "refunded_at": _naive_wall_time(at).replace(tzinfo=tz)}
               for sale_id, line_no, at in session.execute(
                   select(Refund.sale_id, Refund.line_no, Refund.refunded_at))]
    if refunds:
        session.execute(update(Refund), refunds)
    if sales or refunds:
        logger.warning("database written by an older server: stored %d sale and %d refund times "
                       "in UTC", len(sales), len(refunds))
    session.add(Meta(key=TIME_STORAGE_KEY, value=TIME_STORAGE_UTC))


def init_db(engine: Engine, tz: zoneinfo.ZoneInfo) -> sessionmaker[Session]:
    """Migrate the tables to this code's schema; on SQLite, bring times written by older
    code to UTC."""
    from server.migrate import upgrade  # the migrations' env imports this module

    maker = sessionmaker(engine, expire_on_commit=False)
    upgrade(engine)
    try:
        if engine.dialect.name == "sqlite":  # PostgreSQL's timestamptz always kept the instant
            with maker.begin() as session:
                _migrate_sqlite_times(session, tz)
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot open database {engine.url!r}: {exc}") from exc
    return maker
