"""Tables and engine of the market server.

Raw sales are stored as received (``sales`` + ``sale_lines``) and folded, in the
same transaction, into rollups (``stall_hour``, ``item_day``) so that the big
screen reads a few rows instead of scanning raw sales.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    String,
    create_engine,
    event,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from server import ConfigError

logger = logging.getLogger(__name__)


class Base(DeclarativeBase):
    pass


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
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Sale(Base):
    __tablename__ = "sales"

    sale_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    stall_id: Mapped[str] = mapped_column(ForeignKey("stalls.stall_id"), index=True)
    receipt_no: Mapped[int] = mapped_column(Integer)
    trace_code: Mapped[str] = mapped_column(String(20), unique=True)
    sold_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    local_day: Mapped[dt.date] = mapped_column(Date, index=True)
    total_fen: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(256))
    verified: Mapped[bool] = mapped_column(Boolean)
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    raw: Mapped[dict[str, object]] = mapped_column(JSON)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

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
    refunded_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
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
    lines: Mapped[int] = mapped_column(Integer, default=0)
    weight_g: Mapped[int] = mapped_column(BigInteger, default=0)
    quantity: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_fen: Mapped[int] = mapped_column(BigInteger, default=0)


def make_engine(db_url: str) -> Engine:
    url = db_url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(f"cannot use database {db_url!r}: {exc}") from exc
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # WAL lets the big screen read while stalls upload; FULL sync because an
            # acknowledged sale must survive a power cut.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

    return engine


def init_db(engine: Engine) -> sessionmaker:
    try:
        Base.metadata.create_all(engine)
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot open database {engine.url!r}: {exc}") from exc
    return sessionmaker(engine, expire_on_commit=False)
