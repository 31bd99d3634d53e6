"""Server settings, taken inside ``create_app`` so tests can build an app per database."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge import TraceCodeError
from edge.sale import SaleContext
from edge.tracecode import check_market

DEFAULT_DB = "sqlite:///var/market.db"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db_url: str = Field(DEFAULT_DB, title="Database URL", description="sqlite:///FILE or postgresql://...")
    read_db_url: str | None = Field(
        None, title="Read replica URL",
        description="postgresql://... of a streaming replica of db_url (WETMARKET_READ_DB): the "
        "statistics, the big screen's figures and the export read from it, so they cost the "
        "primary nothing; unset, everything reads the primary")
    admin_token: str | None = Field(
        None,
        min_length=8,
        title="Admin token",
        description="bearer token of the market manager (WETMARKET_ADMIN_TOKEN); when unset, "
        "one is generated at the database's first start, printed once, and only its hash is kept",
    )
    market_name: str = Field("平顺菜市场", title="Market name")
    market_region: str = Field(
        "310106", title="Market's region code",
        description="GB/T 2260 region code, the first 6 digits of this market's trace codes "
        "(stall config [market] region)")
    market_number: int = Field(
        1, title="Market number", description="digits 7-9 of this market's trace codes "
        "(stall config [market] number); a sale with another market's trace code is refused")
    timezone: str = Field("Asia/Shanghai", title="Market time zone",
                          description="defines the local day; every time is shown in it")
    # ---- manager pages and alerts (server.sessions, server.alerts) ----
    manage_session_s: int = Field(
        12 * 3600, ge=1, le=7 * 24 * 3600, title="Manager session lifetime (s)",
        description="a manager signed in to /manage is signed out this long after signing in")
    market_opens: dt.time = Field(dt.time(6, 0), title="Market opens",
                                  description="local time; a stall silent outside hours is no alert")
    market_closes: dt.time = Field(dt.time(20, 0), title="Market closes")
    silent_after_s: int = Field(
        30 * 60, ge=1, title="Silent stall after (s)",
        description="a stall seen today that has not reached the server for this long, during "
                    "market hours, raises a stall_silent alert")
    alert_check_s: float = Field(60.0, gt=0, le=3600, title="Alert checks every (s)",
                                 description="the server's periodic checks: silent stalls, prices "
                                             "above 1.5x the market median")
    stall_token_cache_s: float = Field(
        30.0, ge=0, le=3600, title="Stall tokens remembered for (s)",
        description="how long a server process trusts a stall's token it has looked up; any change "
                    "of a stall made through any server process on this database forgets them at "
                    "once, so this only bounds a change made to the database behind the servers' "
                    "backs; 0 looks every request's token up")
    check_processes: int | None = Field(
        None, ge=0, le=64, title="Check processes",
        description="processes beside the server's own that check batched uploads (16 sales or "
                    "more: the legal checks, digest and signature); none given: one less than "
                    "the CPUs, at most 4, or none when the server runs several --workers; 0: "
                    "every upload checked in the server's own process (server/checkpool.py)")

    write_process: Literal["auto", "on", "off"] = Field(
        "auto", title="Writer process",
        description="PostgreSQL: small uploads (fewer than 16 sales) written by a process of "
                    "their own (server/writeprocess.py); auto: started the first time they queue "
                    "behind the writer; on: at the server's start; off: never (SQLite: always off)")

    # ---- online orders (server.orders, issue 19) ----
    order_tolerance_pct: int = Field(
        10, ge=0, le=100, title="Order tolerance (%)",
        description="a weighed line differing from the shopper's estimate by more than this is "
                    "shown to her with both amounts")
    order_lead_min: int = Field(15, ge=0, le=24 * 60, title="Earliest pickup (minutes ahead)")
    order_slot_min: int = Field(15, ge=5, le=120, title="Pickup slot length (minutes)")
    order_days: int = Field(2, ge=1, le=7, title="Pickup days offered (today and the next)")
    order_rate_phone: str = Field("10/minute;60/hour", title="Order calls per phone",
                                  description="limits' notation; placing and cancelling orders")
    order_rate_addr: str = Field("30/minute;300/hour", title="Order calls per client address",
                                 description="limits' notation; sign-in, placing and cancelling")
    shop_session_s: int = Field(30 * 24 * 3600, ge=60, title="Shopper session lifetime (s)")
    shop_code_sender: str = Field(
        "display", title="How a shopper's sign-in code reaches her phone",
        description="'command:PROGRAM ARGS...' (run with the phone number last, the SMS text on "
                    "stdin: an SMS gateway's client) or 'display' (the code shown on the page: "
                    "the demo and trials only; server/shop_codes.py)")
    shop_code_rate: str = Field("1/30second;5/hour", title="Sign-in codes sent per phone",
                                description="limits' notation")
    shop_code_tries: str = Field("5/10minute;20/day", title="Sign-in code tries per phone",
                                 description="limits' notation; a wrong code counts")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v

    @field_validator("shop_code_sender")
    @classmethod
    def _sender(cls, v: str) -> str:
        from server.shop_codes import CodeSender

        CodeSender.parse(v)
        return v

    @field_validator("order_rate_phone", "order_rate_addr", "shop_code_rate", "shop_code_tries")
    @classmethod
    def _rate(cls, v: str) -> str:
        from limits import parse_many

        try:
            parse_many(v)
        except ValueError as exc:
            raise ValueError(f"not a rate limit like '10/minute;60/hour': {v!r}") from exc
        return v

    @model_validator(mode="after")
    def _market_fits_trace_codes(self) -> Settings:
        try:
            check_market(self.market_region, self.market_number)
        except TraceCodeError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @field_validator("db_url")
    @classmethod
    def _supported_db(cls, v: str) -> str:
        if not v.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
            raise ValueError(f"unsupported database URL {v!r}: use sqlite:///FILE or postgresql://...")
        return v

    @model_validator(mode="after")
    def _replica_of_postgresql(self) -> Settings:
        if self.read_db_url is not None:
            if not self.read_db_url.startswith(("postgresql://", "postgresql+psycopg://")):
                raise ValueError(f"read_db_url {self.read_db_url!r}: a read replica is a PostgreSQL "
                                 "streaming replica (postgresql://...)")
            if self.sqlite_path() is not None or self.db_url.startswith("sqlite"):
                raise ValueError("read_db_url: a read replica needs a PostgreSQL primary (db_url)")
        return self

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def sale_context(self, stall_id: str) -> SaleContext:
        """What this market expects of a sale posted by ``stall_id`` (``edge.sale``)."""
        return SaleContext(region=self.market_region, market=self.market_number, stall_id=stall_id)

    def sqlite_path(self) -> Path | None:
        if self.db_url.startswith("sqlite:///"):
            return Path(self.db_url.removeprefix("sqlite:///"))
        return None
