"""Server settings, taken inside ``create_app`` so tests can build an app per database."""

from __future__ import annotations

import zoneinfo
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge import TraceCodeError
from edge.sale import SaleContext
from edge.tracecode import check_market

DEFAULT_DB = "sqlite:///var/market.db"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db_url: str = Field(DEFAULT_DB, title="Database URL", description="sqlite:///FILE or postgresql://...")
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

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
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
