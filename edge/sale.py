"""The Sale: what a stall journals, prints and uploads (ARCHITECTURE.md, "Sale JSON").

This is the boundary model shared by the edge and the server.  It checks the
shape and the internal consistency of a sale (units, digits, that the total is
the sum of the lines); whether each amount is legally priced is the pricing
module's job (``edge.pricing``), so that the legally relevant rule lives in
one place.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge import TraceCodeError
from edge.tracecode import parse_trace_code

PriceUnit = Literal["kg", "500g", "piece"]

#: Far above any stall sale (1,000,000 元): refuses overflowed or absurd amounts.
MAX_AMOUNT_FEN = 100_000_000


class SaleLine(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    plu: str = Field(min_length=1, max_length=16, description="item code (PLU)")
    name: str = Field(min_length=1, max_length=64, description="item name (Chinese)")
    weight_g: int | None = Field(default=None, gt=0, le=1_000_000, description="net weight")
    quantity: int | None = Field(default=None, gt=0, le=10_000, description="pieces")
    unit_price_fen: int = Field(gt=0, le=MAX_AMOUNT_FEN, description="unit price in 分")
    price_unit: PriceUnit
    amount_fen: int = Field(ge=0, le=MAX_AMOUNT_FEN)
    batch_code: str | None = Field(default=None, max_length=32)

    @model_validator(mode="after")
    def _weight_or_quantity(self) -> SaleLine:
        if self.price_unit == "piece":
            if self.quantity is None or self.weight_g is not None:
                raise ValueError("a per-piece line needs quantity and no weight_g")
        elif self.weight_g is None or self.quantity is not None:
            raise ValueError(f"a per-{self.price_unit} line needs weight_g and no quantity")
        return self


class Sale(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    sale_id: uuid.UUID
    stall_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")
    receipt_no: int = Field(ge=1, le=9_999_999)
    sold_at: dt.datetime
    trace_code: str = Field(pattern=r"^[0-9]{20}$")
    lines: list[SaleLine] = Field(min_length=1, max_length=100)
    total_fen: int = Field(ge=0, le=MAX_AMOUNT_FEN)
    prev_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    signature: str = Field(default="", max_length=256)

    @model_validator(mode="after")
    def _consistent(self) -> Sale:
        if self.sold_at.tzinfo is None:
            raise ValueError("sold_at needs a UTC offset")
        if self.total_fen != sum(line.amount_fen for line in self.lines):
            raise ValueError("total_fen is not the sum of the lines' amount_fen")
        if int(self.trace_code[12:19]) != self.receipt_no:
            raise ValueError("trace_code does not carry this receipt_no")
        try:  # the check digit and layout, wherever a sale is read (edge.tracecode)
            parse_trace_code(self.trace_code)
        except TraceCodeError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json")
