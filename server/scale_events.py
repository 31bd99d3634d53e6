"""The stalls' scale audit logs, uploaded entry by entry (anti-cheat: DOMAIN.md §2).

A stall's scale writes every zero, tare, calibration and error to its audit log
(``firmware_bridge.audit``: JSON lines numbered 1, 2, 3... by ``seq``, each chained to
the one before by SHA-256, stamped with the scale's audit counter, which only a
calibration raises).  The stall uploads the entries it has not sent yet, as written
(``edge/scale_upload.py``); the server checks each one and stores it:

- idempotent by (stall, ``seq``): the same entry again is a ``duplicate``; another entry
  under a stored ``seq`` (the log was replaced or edited) is refused and alerted;
- an entry whose hash does not verify (``bad_hash``), that does not follow the stored
  entry before it or is not followed by the stored one after it (``chain_mismatch``),
  or whose audit counter went back (``counter_back``) is stored with that flag and
  alerted, never dropped;
- alerts (``scale_event``, once per key): an audit counter that rose other than by a
  calibration entry raising it by one, an entry replaced; and, through
  ``alerts.after_scale_events`` (the alert rules' home), calibrations, errors, flagged
  entries and entry numbers missing before a new one.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import zoneinfo
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firmware_bridge.audit import (
    GENESIS,
    entry_hash,  # the log's own hash rule
)
from server import alerts, db
from server.fields import EARLIEST, LATEST

logger = logging.getLogger(__name__)

#: Entries per upload; the stall sends 100 at a time.
MAX_BATCH = 500
#: A long error detail is kept cut to the column's width (after its hash was checked).
DETAIL_CHARS = 400
HEX64 = r"^[0-9a-f]{64}$"

Status = Literal["accepted", "duplicate", "refused"]


class AuditEntry(BaseModel):
    """One line of a scale's audit log, exactly as ``firmware_bridge.audit.AuditLog`` writes it."""

    model_config = ConfigDict(extra="forbid")

    seq: int = Field(strict=True, ge=1, le=2**31 - 1, description="the entry's number: 1, 2, 3...")
    t: float = Field(strict=True, allow_inf_nan=False, description="when, in Unix seconds")
    event: str = Field(pattern=r"^[a-z][a-z_]{0,15}$",
                       description="zero, tare, clear_tare, calibration, calibration_mode, error...")
    counter: int = Field(strict=True, ge=0, le=2**31 - 1, description="the scale's audit counter")
    detail: str = Field(max_length=2000)
    prev: str = Field(pattern=HEX64, description="hash of the entry before (64 zeros for the first)")
    hash: str = Field(pattern=HEX64, description="SHA-256 of the entry without its hash")

    @field_validator("t")
    @classmethod
    def _in_range(cls, v: float) -> float:
        if not EARLIEST.timestamp() <= v < LATEST.timestamp():
            raise ValueError("t out of range: use the UTC years 2000..2099")
        return v

    @property
    def at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.t, dt.UTC)


class Outcome(BaseModel):
    seq: int | None
    status: Status
    reason: str | None = None
    flags: list[str] = []


def _alert(session: Session, stall_id: str, key: str, detail: str, at: dt.datetime) -> None:
    alerts.raise_alert(session, "scale_event", f"{stall_id}:{key}", detail, stall_id=stall_id, at=at)


class _Upload:
    """One stall's upload: the entries in ``seq`` order against what is stored."""

    def __init__(self, session: Session, stall_id: str, tz: zoneinfo.ZoneInfo, now: dt.datetime) -> None:
        self.session, self.stall_id, self.tz, self.now = session, stall_id, tz, now
        #: (seq, kind, detail, flags) of each entry stored: ``alerts.after_scale_events``.
        self.stored: list[tuple[int, str, str, list[str]]] = []

    def _stored(self, seq: int) -> db.ScaleEvent | None:
        return self.session.get(db.ScaleEvent, (self.stall_id, seq))

    def one(self, raw: Any) -> Outcome:
        seq = _sort_key(raw)
        try:
            entry = AuditEntry.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ()))
            return Outcome(seq=None if seq == math.inf else int(seq), status="refused",
                           reason=f"{where}: {err['msg']}" if where else err["msg"])
        stored = self._stored(entry.seq)
        if stored is None:
            try:
                with self.session.begin_nested():
                    return Outcome(seq=entry.seq, status="accepted", flags=self._store(entry, raw))
            except IntegrityError:
                # A concurrent upload of the same log stored it since we looked (PostgreSQL).
                stored = self._stored(entry.seq)
                if stored is None:
                    raise
        if stored.hash == entry.hash:
            return Outcome(seq=entry.seq, status="duplicate", flags=stored.flags)
        _alert(self.session, self.stall_id, f"replaced:{entry.seq}",
               f"摊位 {self.stall_id} 秤审计记录 #{entry.seq} 与已收到的不同（日志被替换或改动）— stall "
               f"{self.stall_id}: scale audit entry #{entry.seq} differs from the one received "
               f"before", self.now)
        return Outcome(seq=entry.seq, status="refused",
                       reason=f"entry {entry.seq} is stored with another hash: the audit log was "
                              f"replaced or edited")

    def _store(self, entry: AuditEntry, raw: dict[str, Any]) -> list[str]:
        flags: list[str] = []
        if entry_hash(raw) != entry.hash:
            flags.append("bad_hash")
        before = self._stored(entry.seq - 1)
        after = self._stored(entry.seq + 1)
        if ((entry.seq == 1 and entry.prev != GENESIS) or (before is not None and before.hash != entry.prev)
                or (after is not None and after.prev != entry.hash)):
            flags.append("chain_mismatch")
        if before is not None and entry.counter < before.counter:
            flags.append("counter_back")
        self._counter_alert(entry, before)
        detail = entry.detail if len(entry.detail) <= DETAIL_CHARS else entry.detail[:DETAIL_CHARS - 1] + "…"
        self.session.add(db.ScaleEvent(
            stall_id=self.stall_id, seq=entry.seq, counter=entry.counter, kind=entry.event, detail=detail,
            at=entry.at, prev=entry.prev, hash=entry.hash, flags=flags, received_at=self.now))
        self.session.flush()
        self.stored.append((entry.seq, entry.event, detail, flags))
        return flags

    def _counter_alert(self, entry: AuditEntry, before: db.ScaleEvent | None) -> None:
        """Only a calibration raises the audit counter, by one: a rise without one means
        calibrations this log does not show (the log was replaced or cut)."""
        if before is None or entry.counter <= before.counter or (
                entry.event == "calibration" and entry.counter == before.counter + 1):
            return
        sid = self.stall_id
        _alert(self.session, sid, f"counter:{entry.seq}",
               f"摊位 {sid} 的审计计数器从 {before.counter} 跳到 {entry.counter}，缺少标定记录 — stall "
               f"{sid}: audit counter rose from {before.counter} to {entry.counter} without its "
               f"calibration entries (#{entry.seq})", entry.at)


def _sort_key(raw: Any) -> float:
    seq = raw.get("seq") if isinstance(raw, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else math.inf


def ingest(session: Session, stall: db.Stall, entries: list[Any], tz: zoneinfo.ZoneInfo, *,
           now: dt.datetime | None = None) -> list[Outcome]:
    """Check and store one stall's entries in the caller's transaction; one outcome each, in
    the order sent.  Entries are taken in ``seq`` order, so a batch may come in any order."""
    upload = _Upload(session, stall.stall_id, tz, now or dt.datetime.now(dt.UTC))
    order = sorted(range(len(entries)), key=lambda i: _sort_key(entries[i]))
    outcomes: dict[int, Outcome] = {i: upload.one(entries[i]) for i in order}
    alerts.after_scale_events(session, stall.stall_id, upload.stored)
    return [outcomes[i] for i in range(len(entries))]


def list_events(session: Session, *, stall_id: str | None = None, kind: str | None = None,
                limit: int = 100, offset: int = 0) -> list[db.ScaleEvent]:
    """Stored entries, the latest first."""
    e = db.ScaleEvent
    stmt = select(e)
    if stall_id is not None:
        stmt = stmt.where(e.stall_id == stall_id)
    if kind is not None:
        stmt = stmt.where(e.kind == kind)
    return list(session.execute(stmt.order_by(e.at.desc(), e.stall_id, e.seq.desc())
                                .limit(limit).offset(offset)).scalars())


def upload_status(session: Session) -> list[dict[str, Any]]:
    """Per stall: whether its scale uploads its audit log, the last entry and when it came."""
    e = db.ScaleEvent
    last = (select(e.stall_id, func.max(e.seq).label("seq"), func.max(e.received_at).label("received"))
            .group_by(e.stall_id).subquery())
    rows = session.execute(
        select(db.Stall.stall_id, db.Stall.name, last.c.seq, last.c.received, e.counter, e.at)
        .outerjoin(last, last.c.stall_id == db.Stall.stall_id)
        .outerjoin(e, (e.stall_id == last.c.stall_id) & (e.seq == last.c.seq))
        .order_by(db.Stall.stall_id)).all()
    return [{"stall_id": sid, "name": name, "uploads": seq is not None, "last_seq": seq,
             "last_counter": counter, "last_at": at, "last_received_at": received}
            for sid, name, seq, received, counter, at in rows]
