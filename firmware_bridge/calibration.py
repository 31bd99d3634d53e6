"""Calibration of raw-count modules (zero and span with a known weight), sealed.

A calibration can only be made inside an explicit calibration mode
(:meth:`CalibrationStore.calibration_mode`, the software twin of the sealed
calibration switch).  Committing it bumps the audit counter and writes the file
with an HMAC seal over its content and that counter.  Loading checks the seal and
that the counter matches the audit log: a hand-edited file, or one copied from
another scale, does not load.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from firmware_bridge import CalibrationError
from firmware_bridge.audit import AuditLog

logger = logging.getLogger(__name__)

# The default key only detects edits; a market provisions a per-scale key.
DEFAULT_KEY = b"wetmarket-calibration-v1"
__all__ = ["Calibration", "CalibrationError", "CalibrationSession", "CalibrationStore"]


@dataclass(frozen=True, slots=True)
class Calibration:
    """grams = (counts - zero_counts) * span_g / span_counts, rounded half away from zero."""

    zero_counts: int
    span_counts: int  # counts for span_g above zero
    span_g: int

    def __post_init__(self) -> None:
        if self.span_g <= 0 or self.span_counts == 0:
            raise CalibrationError("span weight and span counts must be non-zero")

    def to_grams(self, counts: int) -> int:
        return self.to_grams_ratio(counts, 1)

    def to_grams_ratio(self, counts_sum: int, n: int) -> int:
        """Grams for the mean of ``n`` counts summing to ``counts_sum`` (integers only)."""
        num = (counts_sum - n * self.zero_counts) * self.span_g
        den = n * self.span_counts
        if den < 0:
            num, den = -num, -den
        q = (2 * abs(num) + den) // (2 * den)
        return q if num >= 0 else -q


def _mean(counts: Iterable[int], still_counts: int) -> int:
    values = list(counts)
    if len(values) < 3:
        raise CalibrationError("need at least 3 samples")
    if max(values) - min(values) > still_counts:
        raise CalibrationError(
            f"the load was not still while sampling ({max(values) - min(values)} counts apart)"
        )
    # Round half away from zero on integers: the mean is stored, so it must not wobble.
    total, n = sum(values), len(values)
    q = (2 * abs(total) + n) // (2 * n)
    return q if total >= 0 else -q


class CalibrationSession:
    """What one may do in calibration mode: capture zero, capture span, commit."""

    def __init__(self, store: CalibrationStore, still_counts: int = 1000) -> None:
        # About 2e on a typical board (100 counts/g, e = 5 g): noise passes, a swing does not.
        self.still_counts = still_counts
        self._store = store
        self.zero_counts: int | None = None
        self.span: tuple[int, int] | None = None
        self.active = True

    def capture_zero(self, counts: Iterable[int]) -> int:
        self._check()
        self.zero_counts = _mean(counts, self.still_counts)
        return self.zero_counts

    def capture_span(self, counts: Iterable[int], known_g: int) -> int:
        self._check()
        if self.zero_counts is None:
            raise CalibrationError("capture zero before span")
        if known_g <= 0:
            raise CalibrationError("the known weight must be positive")
        span_counts = _mean(counts, self.still_counts) - self.zero_counts
        if abs(span_counts) < known_g:
            raise CalibrationError(
                f"span of {span_counts} counts for {known_g} g: is the weight on the plate?"
            )
        self.span = (span_counts, known_g)
        return span_counts

    def commit(self) -> Calibration:
        self._check()
        if self.zero_counts is None or self.span is None:
            raise CalibrationError("capture zero and span before committing")
        cal = Calibration(self.zero_counts, self.span[0], self.span[1])
        self._store._save(cal)
        return cal

    def _check(self) -> None:
        if not self.active:
            raise CalibrationError("calibration mode has ended")


class CalibrationStore:
    """The sealed calibration file of one scale, tied to its audit log."""

    def __init__(self, path: str | os.PathLike[str], audit: AuditLog, key: bytes = DEFAULT_KEY) -> None:
        self.path = Path(path)
        self.audit = audit
        self._key = key

    def _seal(self, body: dict[str, int]) -> str:
        raw = json.dumps(body, sort_keys=True).encode()
        return hmac.new(self._key, raw, hashlib.sha256).hexdigest()

    def load(self) -> Calibration:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            body = {k: int(doc[k]) for k in ("zero_counts", "span_counts", "span_g", "counter")}
            seal = str(doc["seal"])
        except FileNotFoundError:
            raise CalibrationError(f"no calibration at {self.path}: calibrate first") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CalibrationError(f"calibration file {self.path} is unreadable: {exc}") from exc
        if not hmac.compare_digest(seal, self._seal(body)):
            self.audit.record("error", f"calibration seal broken: {self.path}")
            raise CalibrationError(f"calibration seal of {self.path} is broken")
        if body["counter"] != self.audit.counter:
            self.audit.record("error", "calibration counter does not match the audit log")
            raise CalibrationError(
                f"calibration counter {body['counter']} != audit counter {self.audit.counter}"
            )
        return Calibration(body["zero_counts"], body["span_counts"], body["span_g"])

    @contextmanager
    def calibration_mode(self, operator: str = "", still_counts: int = 1000) -> Iterator[CalibrationSession]:
        """The only way to change the calibration; entering and leaving are audited."""
        self.audit.record("calibration_mode", f"enter {operator}".strip())
        session = CalibrationSession(self, still_counts)
        try:
            yield session
        finally:
            session.active = False
            self.audit.record("calibration_mode", "leave")

    def _save(self, cal: Calibration) -> None:
        counter = self.audit.record(
            "calibration",
            f"zero={cal.zero_counts} span={cal.span_counts} counts for {cal.span_g} g",
            bump=True,
        )
        body = {**asdict(cal), "counter": counter}
        doc = {**body, "seal": self._seal(body)}
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)  # atomic: a crash leaves the old calibration, never half
        logger.info("calibration saved to %s (audit counter %d)", self.path, counter)
