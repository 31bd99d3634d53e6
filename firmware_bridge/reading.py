"""One weight reading as the stall sees it (the public contract's Reading JSON)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["ok", "motion", "overload", "underload", "error"]


@dataclass(frozen=True, slots=True)
class Reading:
    """A weight in integer grams, as reported by (or derived from) the module.

    ``gross_g``/``net_g`` are ``None`` when the module gave no weight
    (overload, error).  ``t`` is the host's monotonic-independent wall clock
    (``time.time()``) at which the frame was complete.
    """

    gross_g: int | None
    tare_g: int
    net_g: int | None
    stable: bool
    status: Status
    t: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, object]:
        return asdict(self)
