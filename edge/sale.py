"""The Sale: what a stall journals, prints and uploads (ARCHITECTURE.md, "Sale JSON").

This is the boundary model shared by the edge and the server.  It checks the
shape and the internal consistency of a sale (units, digits, that the total is
the sum of the lines, that the trace code is the stall's own); whether each
amount is legally priced is the pricing module's job (``edge.pricing``), so
that the legally relevant rule lives in one place.

Who receives a sale says what it expects through pydantic's validation context,
so the stall (its own config) and the server (its settings and the posting
stall's token) run the very same checks::

    Sale.model_validate(raw, context=SaleContext(region="310106", market=1, stall_id="S01"))

Without a context the sale is still checked in itself: its trace code must carry
its own stall number and receipt number, whatever market it names.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any, Literal, TypedDict, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge import TraceCodeError
from edge.tracecode import check_sale_trace

PriceUnit = Literal["kg", "500g", "piece"]

#: Far above any stall sale (1,000,000 元): refuses overflowed or absurd amounts.
MAX_AMOUNT_FEN = 100_000_000

#: ``sold_at`` must lie in these UTC years.  Every part handles them (the stall's
#: journal, the server's local day in any zone, PostgreSQL, the receipt); a time
#: outside them is a wrong clock, and a sale the server cannot take must not be
#: journaled, or the stall would try to upload it for ever.
FIRST_YEAR, LAST_YEAR = 2000, 2099
_EARLIEST = dt.datetime(FIRST_YEAR, 1, 1, tzinfo=dt.UTC)
_AFTER_LAST = dt.datetime(LAST_YEAR + 1, 1, 1, tzinfo=dt.UTC)
#: The UTC offsets of the world's time zones (Baker Island to Kiribati).
MIN_OFFSET, MAX_OFFSET = dt.timedelta(hours=-12), dt.timedelta(hours=14)

#: Fields may be added to a sale (ARCHITECTURE.md): stalls add ``vendor`` and
#: ``rounding`` to the sale, ``name_en`` to its lines.  They are bounded, because
#: the server stores and serves back whatever it accepts.
MAX_EXTRA_FIELDS = 16
MAX_EXTRA_DEPTH = 3
MAX_SALE_EXTRA_BYTES = 4096
MAX_LINE_EXTRA_BYTES = 1024
_EXTRA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")


class SaleContext(TypedDict, total=False):
    """What the receiver of a sale expects (the pydantic validation context)."""

    #: The receiving market's GB/T 2260 region code and market number: the trace code's
    #: first nine digits must name this market.
    region: str
    market: int
    #: The stall that journals or posts the sale: it may only send its own.
    stall_id: str


def extra_problem(extra: dict[str, Any] | None, max_bytes: int) -> str | None:
    """Why the extra fields of a sale or line are refused, or None."""
    if not extra:
        return None
    if len(extra) > MAX_EXTRA_FIELDS:
        return f"{len(extra)} extra fields, at most {MAX_EXTRA_FIELDS}"
    for name in extra:
        if not _EXTRA_NAME.fullmatch(name):
            return (f"extra field name {name[:40]!r} must be a letter or _ and up to 31 more "
                    "letters, digits or _")
    # What stalls send (a line's name_en): flat ASCII text, which JSON writes in at most six
    # bytes a character (\uXXXX), so within the limit even at its longest without being
    # written out; the server checks every line of every upload here.
    if all(isinstance(value, str) and value.isascii() for value in extra.values()) and sum(
            len(name) + 6 * len(value) + 6 for name, value in extra.items()) + 2 <= max_bytes:
        return None
    # Walk before serialising: a deep nest would exhaust the stack, a 50 MB string the time.
    budget = max_bytes
    stack: list[tuple[object, int]] = [(value, 1) for value in extra.values()]
    while stack:
        value, depth = stack.pop()
        budget -= len(value) if isinstance(value, str) else 1
        if budget < 0:
            return f"extra fields take more than {max_bytes} bytes of JSON"
        if isinstance(value, dict | list):
            if depth > MAX_EXTRA_DEPTH:
                return f"extra fields nest deeper than {MAX_EXTRA_DEPTH} levels"
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    try:
        text = json.dumps(extra, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        return f"extra fields must be plain JSON (no NaN or Infinity): {exc}"
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        return f"extra fields take {size} bytes of JSON, at most {max_bytes}"
    return None


class SaleLine(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    # Strict: a JSON number only; "512", 512.0 or true is a stall bug, not a weight.
    plu: str = Field(min_length=1, max_length=16, description="item code (PLU)")
    name: str = Field(min_length=1, max_length=64, description="item name (Chinese)")
    weight_g: StrictInt | None = Field(default=None, gt=0, le=1_000_000, description="net weight")
    quantity: StrictInt | None = Field(default=None, gt=0, le=10_000, description="pieces")
    unit_price_fen: StrictInt = Field(gt=0, le=MAX_AMOUNT_FEN, description="unit price in 分")
    price_unit: PriceUnit
    amount_fen: StrictInt = Field(ge=0, le=MAX_AMOUNT_FEN)
    batch_code: str | None = Field(default=None, max_length=32)

    @model_validator(mode="after")
    def _weight_or_quantity(self) -> SaleLine:
        if self.price_unit == "piece":
            if self.quantity is None or self.weight_g is not None:
                raise ValueError("a per-piece line needs quantity and no weight_g")
        elif self.weight_g is None or self.quantity is not None:
            raise ValueError(f"a per-{self.price_unit} line needs weight_g and no quantity")
        problem = extra_problem(self.model_extra, MAX_LINE_EXTRA_BYTES)
        if problem:
            raise ValueError(problem)
        return self


def _sold_at_problem(sold_at: dt.datetime) -> str | None:
    offset = sold_at.utcoffset()
    if offset is None:
        return "sold_at needs a UTC offset"
    if not MIN_OFFSET <= offset <= MAX_OFFSET:
        return f"sold_at has UTC offset {offset}, outside -12:00..+14:00"
    # Aware comparisons never overflow, where astimezone() would for year 9999 at -12:00.
    if not _EARLIEST <= sold_at < _AFTER_LAST:
        return (f"sold_at {sold_at.isoformat()} is outside the years {FIRST_YEAR}..{LAST_YEAR} "
                "(UTC): is the stall's clock set?")
    return None


class Sale(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    sale_id: uuid.UUID
    stall_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")
    receipt_no: StrictInt = Field(ge=1, le=9_999_999)
    sold_at: dt.datetime
    trace_code: str = Field(pattern=r"^[0-9]{20}$")
    lines: list[SaleLine] = Field(min_length=1, max_length=100)
    total_fen: StrictInt = Field(ge=0, le=MAX_AMOUNT_FEN)
    prev_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    signature: str = Field(default="", max_length=256)

    @field_validator("sold_at", mode="before")
    @classmethod
    def _iso_text(cls, value: object) -> object:
        # pydantic would read a number as Unix seconds; the contract says ISO 8601.
        if not isinstance(value, str | dt.datetime):
            raise ValueError("sold_at must be an ISO 8601 time with its UTC offset, "
                             "e.g. 2026-11-28T08:15:02+08:00")
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Sale:
        expected = cast(SaleContext, info.context if isinstance(info.context, dict) else {})
        poster = expected.get("stall_id")
        if poster is not None and self.stall_id != poster:
            raise ValueError(f"sale belongs to stall {self.stall_id}, not to {poster} that sends it")
        problem = _sold_at_problem(self.sold_at)
        if problem:
            raise ValueError(problem)
        if self.total_fen != sum(line.amount_fen for line in self.lines):
            raise ValueError("total_fen is not the sum of the lines' amount_fen")
        try:  # layout and check digit, and the code is this stall's and this receipt's
            trace = check_sale_trace(self)
        except TraceCodeError as exc:
            raise ValueError(str(exc)) from exc
        if "region" in expected or "market" in expected:
            region, market = expected.get("region"), expected.get("market")
            if (trace.region, trace.market) != (region, market):
                raise ValueError(
                    f"trace code {self.trace_code} names market {trace.market} of region "
                    f"{trace.region}, not this market ({market} of region {region})")
        problem = extra_problem(self.model_extra, MAX_SALE_EXTRA_BYTES)
        if problem:
            raise ValueError(problem)
        return self

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json")
