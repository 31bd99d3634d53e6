"""The stall's catalogue: items (PLU) with legal unit prices, origin and inspection.

Public API::

    Plu(code, name_zh, name_en, price_unit, unit_price_fen, origin, batch_code,
        inspection, promotion, specials, tare_presets_g, price_cap_fen, market_median_fen,
        label, blocked_reason)
    Plu.price_at(when) -> int                 the lowest promotion price inside its window
    Plu.block_reason -> str | None            why it may not be sold (for the vendor's screen)
    Plu.check_sellable() -> None              CatalogueError with that reason
    Catalogue(items) / Catalogue.from_list([...]) / Catalogue.load(path)
    Catalogue.get(code) -> Plu                CatalogueError for an unknown PLU
    Catalogue.set_price(code, fen) -> PriceWarning | None

Prices are per kg, per 500 g or per piece: never per 斤 or 两 (DOMAIN.md §2).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import pathlib
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge import CatalogueError, PricingError
from edge.pricing import MAX_WEIGHT_G, PriceWarning, check_unit_price, format_yuan
from edge.sale import MAX_AMOUNT_FEN, PriceUnit

logger = logging.getLogger(__name__)

InspectionStatus = Literal["passed", "pending", "failed", "not-tested"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Promotion(_Strict):
    unit_price_fen: int = Field(strict=True, gt=0, le=MAX_AMOUNT_FEN, title="Promotion price")
    starts_at: dt.datetime = Field(title="First instant of the promotion (with UTC offset)")
    ends_at: dt.datetime = Field(title="First instant after the promotion")
    title: str | None = Field(default=None, max_length=64, title="What the screen calls it")

    @model_validator(mode="after")
    def _window(self) -> Promotion:
        if self.starts_at.tzinfo is None or self.ends_at.tzinfo is None:
            raise ValueError("promotion times need a UTC offset")
        if self.ends_at <= self.starts_at:
            raise ValueError("a promotion must end after it starts")
        return self

    def active(self, when: dt.datetime) -> bool:
        return self.starts_at <= when < self.ends_at


class Plu(_Strict):
    code: str = Field(pattern=r"^[0-9A-Za-z-]{1,16}$", title="PLU code")
    name_zh: str = Field(min_length=1, max_length=64, title="Name (Chinese)")
    name_en: str = Field(min_length=1, max_length=64, title="Name (English)")
    price_unit: PriceUnit = Field(title="kg, 500g or piece")
    unit_price_fen: int = Field(strict=True, gt=0, le=MAX_AMOUNT_FEN, title="Unit price in 分")
    origin: str | None = Field(default=None, max_length=64, title="Origin (产地)")
    batch_code: str | None = Field(default=None, max_length=32, title="Batch code")
    inspection: InspectionStatus = Field(default="not-tested", title="Rapid-test result of the batch")
    promotion: Promotion | None = None
    #: The market's specials (特价) of this stall: each its price inside its own window.
    specials: tuple[Promotion, ...] = Field(default=(), max_length=1000, title="Specials")
    tare_presets_g: tuple[int, ...] = Field(default=(), max_length=10, title="Tare presets (g)")
    price_cap_fen: int | None = Field(default=None, strict=True, gt=0, title="Market's price cap")
    market_median_fen: int | None = Field(default=None, strict=True, gt=0,
                                          title="Market median in the same unit")
    label: str | None = Field(default=None, max_length=64, title="Recognizer label of this item")
    #: Why the market stopped this item (a failed batch, a price above the cap); None: it may sell.
    blocked_reason: str | None = Field(default=None, min_length=1, max_length=1000,
                                       title="Why it is not for sale")

    @field_validator("price_unit", mode="before")
    @classmethod
    def _no_jin(cls, value: Any) -> Any:
        if value in ("斤", "jin", "两", "liang"):
            raise ValueError("prices are per kg or per 500g, never per 斤 or 两")
        return value

    @field_validator("tare_presets_g")
    @classmethod
    def _tares(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(isinstance(t, bool) or not 0 < t < MAX_WEIGHT_G for t in value):
            raise ValueError("tare presets are positive grams")
        return value

    @model_validator(mode="after")
    def _prices(self) -> Plu:
        if self.price_cap_fen is not None and self.unit_price_fen > self.price_cap_fen:
            raise ValueError(f"unit price {format_yuan(self.unit_price_fen)} is above the "
                             f"market's cap {format_yuan(self.price_cap_fen)}")
        if any(p.unit_price_fen >= self.unit_price_fen for p in self._promotions()):
            raise ValueError("a promotion price must be below the unit price")
        return self

    def _promotions(self) -> tuple[Promotion, ...]:
        return (self.promotion, *self.specials) if self.promotion else self.specials

    def price_at(self, when: dt.datetime) -> int:
        """The unit price in force at ``when``: the lowest promotion inside its window."""
        return min((p.unit_price_fen for p in self._promotions() if p.active(when)),
                   default=self.unit_price_fen)

    @property
    def block_reason(self) -> str | None:
        """Why this item may not be sold now (Chinese / English, for the vendor's screen)."""
        if self.blocked_reason is not None:
            return self.blocked_reason
        if self.inspection == "failed":
            return (f"PLU {self.code} {self.name_zh}：批次 {self.batch_code} 农残快检不合格，禁止销售 / "
                    f"batch {self.batch_code} failed its rapid test and is stopped from sale")
        return None

    def check_sellable(self) -> None:
        reason = self.block_reason
        if reason is not None:
            raise CatalogueError(reason)

    def price_warning(self) -> PriceWarning | None:
        return check_unit_price(self.unit_price_fen, self.price_unit,
                                market_median_fen=self.market_median_fen)


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or 'item'}: {first['msg']}"


class Catalogue:
    def __init__(self, items: Iterable[Plu]) -> None:
        self._items: dict[str, Plu] = {}
        for item in items:
            if item.code in self._items:
                raise CatalogueError(f"PLU {item.code} appears twice in the catalogue")
            self._items[item.code] = item

    @classmethod
    def from_list(cls, raw: Iterable[dict[str, Any]]) -> Catalogue:
        items = []
        for index, entry in enumerate(raw):
            try:
                items.append(Plu.model_validate(entry))
            except ValidationError as exc:
                raise CatalogueError(f"catalogue item {index + 1}: {_first_error(exc)}") from exc
        return cls(items)

    @classmethod
    def load(cls, path: pathlib.Path | str) -> Catalogue:
        try:
            raw = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CatalogueError(f"catalogue {path} cannot be read: {exc}") from exc
        if not isinstance(raw, list):
            raise CatalogueError(f"catalogue {path} must be a JSON list of items")
        return cls.from_list(raw)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Plu]:
        return iter(self._items.values())

    def get(self, code: str) -> Plu:
        try:
            return self._items[code]
        except KeyError:
            raise CatalogueError(f"unknown PLU {code!r}") from None

    def set_price(self, code: str, unit_price_fen: int) -> PriceWarning | None:
        """Change a unit price; refuses 0, absurd or capped prices, warns far from the median."""
        item = self.get(code)
        try:
            warning = check_unit_price(unit_price_fen, item.price_unit,
                                       market_median_fen=item.market_median_fen)
            updated = Plu.model_validate({**item.model_dump(), "unit_price_fen": unit_price_fen})
        except ValidationError as exc:
            raise PricingError(f"PLU {code}: {_first_error(exc)}") from exc
        self._items[code] = updated
        logger.info("PLU %s price %d -> %d 分/%s", code, item.unit_price_fen, unit_price_fen,
                    item.price_unit)
        return warning
