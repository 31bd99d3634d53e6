"""Field types the management bodies share: instants with their offset, codes, plain text.

Each refuses what it cannot store with a message that says what is wrong, so a
typo is a clear 422, never a 500 further down (a year 9999 instant west of UTC
overflows every conversion; a control character garbles a printed page).
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, Field, StringConstraints

#: As a stall's catalogue writes it (``edge.catalogue.Plu.code``).
PLU_PATTERN = r"^[0-9A-Za-z-]{1,16}$"
#: As the stalls register (``server/routes/stalls.py``).
STALL_PATTERN = r"^[A-Za-z0-9_-]{1,16}$"
#: A batch code as sale lines carry it (``edge.sale``: at most 32 characters), without spaces.
BATCH_PATTERN = r"^\S{1,32}$"

#: What every part handles (``edge.sale``): instants in the UTC years 2000..2099.
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)


def _in_range(value: dt.datetime) -> dt.datetime:
    try:
        utc = value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("time out of range: use the UTC years 2000..2099") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError("time out of range: use the UTC years 2000..2099")
    return utc


#: An instant with its UTC offset (``2026-12-02T08:30:00+08:00``), kept in UTC.
Instant = Annotated[AwareDatetime, AfterValidator(_in_range)]

PLU = Annotated[str, Field(pattern=PLU_PATTERN, description="the item's PLU code")]
StallId = Annotated[str, Field(pattern=STALL_PATTERN, description="the stall's id")]



def _printable(value: str) -> str:
    # Controls (a line break in a one-line field), format characters (a right-to-left
    # override that makes "12.00" read "00.21") and lone surrogates (PostgreSQL refuses them).
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in value):
        raise ValueError("text may not hold control or format characters")
    return value


Text64 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
                   AfterValidator(_printable)]
Text200 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
                    AfterValidator(_printable)]
BatchCode = Annotated[str, Field(pattern=BATCH_PATTERN, description="the batch code as the stall's "
                                 "receipts carry it (at most 32 characters, no spaces)"),
                      AfterValidator(_printable)]
