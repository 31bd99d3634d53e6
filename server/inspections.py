"""Rapid pesticide-residue tests (农残快检): recorded by managers, shown to everyone.

The rule that blocks a batch (DOMAIN.md §3): a batch at a stall is blocked for sale
while its **latest** test failed; "latest" is the latest ``tested_at`` (a test entered
late from paper takes its place in time), the later-recorded one on a tie.  A retest
that passes unblocks the batch; the failed test stays in the history, on the trace
pages and in the day's figures.  The stalls learn it through the feed (``server/feed.py``
reads :func:`blocked_batches`' rule from the ``inspections`` table), so every recorded
test bumps the feed version in its own transaction.

With the enzyme-inhibition method (GB/T 5009.199) an inhibition of 50 % or more is
positive, a fail: the result is derived from the inhibition when one is given, and an
explicit result that contradicts it is refused.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import Select, and_, func, or_, select, tuple_
from sqlalchemy.orm import Session

from server import db, feedversion
from server.alerts import raise_alert
from server.auth import Actor
from server.fields import PLU, BatchCode, Instant, StallId, Text64, Text200
from server.refusals import Conflict, NotFound, Refused

logger = logging.getLogger(__name__)

DEFAULT_METHOD = "酶抑制率法 (GB/T 5009.199)"
#: DOMAIN.md §3: an enzyme inhibition of 50 % or more is positive (per mille: tenths of a %).
FAIL_FROM_PERMILLE = 500
#: A tester's clock may run a little ahead of the server's; more than this is a typo.
FUTURE_SKEW = dt.timedelta(minutes=5)

Result = Literal["pass", "fail"]


class InspectionIn(BaseModel):
    """One rapid test as the tester reports it."""

    model_config = ConfigDict(extra="forbid")

    batch_code: BatchCode
    plu: PLU
    stall_id: StallId
    method: Text64 = Field(DEFAULT_METHOD, description="the test method")
    inhibition_percent: float | None = Field(
        None, strict=True, ge=0, le=100, allow_inf_nan=False,
        description="enzyme inhibition in %, at most one decimal (62.5); 50 or more is a fail")
    result: Result | None = Field(None, description="derived from inhibition_percent when given "
                                  "(a contradicting one is refused); required without it")
    tester: Text64
    tested_at: Instant = Field(description="when the test was read, with its UTC offset")
    note: Text200 | None = None

    @field_validator("inhibition_percent")
    @classmethod
    def _one_decimal(cls, v: float | None) -> float | None:
        if v is not None and abs(v * 10 - round(v * 10)) > 1e-6:
            raise ValueError("inhibition_percent takes at most one decimal, e.g. 62.5")
        return v

    @property
    def inhibition_permille(self) -> int | None:
        return None if self.inhibition_percent is None else round(self.inhibition_percent * 10)

    @model_validator(mode="after")
    def _result_fits(self) -> InspectionIn:
        permille = self.inhibition_permille
        if permille is None:
            if self.result is None:
                raise ValueError("give inhibition_percent (the result follows from it) or result")
            return self
        derived: Result = "fail" if permille >= FAIL_FROM_PERMILLE else "pass"
        if self.result is not None and self.result != derived:
            raise ValueError(f"an inhibition of {permille / 10:.1f} % is a {derived} "
                             f"(50 % or more fails, GB/T 5009.199), not a {self.result}")
        self.result = derived
        return self


def _latest_first(stmt: Select[Any]) -> Select[Any]:
    return stmt.order_by(db.Inspection.tested_at.desc(), db.Inspection.id.desc())


def _ranked(*where: Any) -> Any:
    """Tests (those matching ``where``, whole batches) with their rank inside their (stall,
    batch): 1 is the latest, the one that counts."""
    ins = db.Inspection
    rank = func.row_number().over(partition_by=(ins.stall_id, ins.batch_code),
                                  order_by=(ins.tested_at.desc(), ins.id.desc()))
    return select(ins.id, ins.stall_id, ins.batch_code, ins.result, rank.label("rank")).where(
        *where).subquery()


def latest(session: Session, stall_id: str, batch_code: str) -> db.Inspection | None:
    """The test that decides whether ``batch_code`` may be sold at ``stall_id``."""
    return session.execute(_latest_first(select(db.Inspection).where(
        db.Inspection.stall_id == stall_id, db.Inspection.batch_code == batch_code)).limit(1)
    ).scalar_one_or_none()


def blocked_batches(session: Session, stall_id: str | None = None,
                    since: dt.date | None = None) -> list[db.Inspection]:
    """The failed tests that block their batch now (the latest test of the batch failed).

    ``since``: only those failed on that market day or later, exactly (a later test of such
    a batch is on that day or later too), ranking only those days' tests: a page of recent
    blocks need not rank a year of tests.
    """
    ranked = _ranked(*([db.Inspection.local_day >= since] if since is not None else []))
    stmt = (select(db.Inspection).join(ranked, ranked.c.id == db.Inspection.id)
            .where(ranked.c.rank == 1, ranked.c.result == "fail"))
    if stall_id is not None:
        stmt = stmt.where(db.Inspection.stall_id == stall_id)
    return list(session.execute(_latest_first(stmt)).scalars())


def record(session: Session, actor: Actor, body: InspectionIn, tz: zoneinfo.ZoneInfo, *,
           now: dt.datetime | None = None) -> db.Inspection:
    """Store one test in the caller's transaction (which commits it), bump the feed version
    and raise an ``inspection_failed`` alert for a fail."""
    now = now or dt.datetime.now(dt.UTC)
    if body.tested_at > now + FUTURE_SKEW:
        raise Refused(f"tested_at {body.tested_at.astimezone(tz).isoformat()} is in the future")
    stall = session.get(db.Stall, body.stall_id)
    if stall is None:
        raise NotFound(f"no stall {body.stall_id}")
    item = session.get(db.Item, body.plu)
    if item is None:
        raise NotFound(f"no item with PLU {body.plu} in the market catalogue")
    # A batch is one item: the same code for another item at this stall is a typo.
    other = session.execute(select(db.Inspection.plu).where(
        db.Inspection.stall_id == body.stall_id, db.Inspection.batch_code == body.batch_code,
        db.Inspection.plu != body.plu).limit(1)).scalar()
    if other is not None:
        raise Conflict(f"batch {body.batch_code} at stall {body.stall_id} was tested as PLU {other}, "
                       f"not {body.plu}")
    assert body.result is not None  # InspectionIn derives or requires it
    row = db.Inspection(
        batch_code=body.batch_code, plu=body.plu, stall_id=body.stall_id, method=body.method,
        inhibition_permille=body.inhibition_permille, result=body.result, tester=body.tester,
        tested_at=body.tested_at, local_day=body.tested_at.astimezone(tz).date(),
        recorded_by=actor.who, recorded_at=now, note=body.note)
    session.add(row)
    session.flush()
    feedversion.bump(session)
    if row.result == "fail":
        raise_alert(session, "inspection_failed", f"{row.stall_id}:{row.batch_code}:{row.id}",
                    f"批次 {row.batch_code}（{item.name}）在摊位 {row.stall_id} 农残快检不合格"
                    f"{_inhibition_text(row)}，已禁止销售 / batch failed the rapid test, blocked",
                    stall_id=row.stall_id, plu=row.plu, at=now)
    logger.info("inspection %d: stall %s batch %s %s (by %s)", row.id, row.stall_id, row.batch_code,
                row.result, actor.who)
    return row


def _inhibition_text(row: db.Inspection) -> str:
    if row.inhibition_permille is None:
        return ""
    return f"（抑制率 {row.inhibition_permille / 10:.1f}%）"


def to_json(row: db.Inspection, tz: zoneinfo.ZoneInfo, *, names: dict[str, tuple[str, str]],
            stalls: dict[str, str], blocking: bool) -> dict[str, Any]:
    """One test as the API, the pages and the big screen show it (times in market time)."""
    name, name_en = names.get(row.plu, (None, None))
    return {
        "id": row.id, "batch_code": row.batch_code, "plu": row.plu, "name": name, "name_en": name_en,
        "stall_id": row.stall_id, "stall_name": stalls.get(row.stall_id),
        "method": row.method,
        "inhibition_percent": None if row.inhibition_permille is None else row.inhibition_permille / 10,
        "result": row.result, "tester": row.tester,
        "tested_at": row.tested_at.astimezone(tz).isoformat(), "local_day": row.local_day.isoformat(),
        "recorded_by": row.recorded_by, "recorded_at": row.recorded_at.astimezone(tz).isoformat(),
        "note": row.note, "blocking": blocking,
    }


def describe(session: Session, rows: list[db.Inspection], tz: zoneinfo.ZoneInfo) -> list[dict[str, Any]]:
    """``to_json`` for each row, with item and stall names and whether it blocks its batch now."""
    plus = {r.plu for r in rows}
    names = {plu: (name, en) for plu, name, en in session.execute(
        select(db.Item.plu, db.Item.name, db.Item.name_en).where(db.Item.plu.in_(plus)))} if plus else {}
    sids = {r.stall_id for r in rows}
    stalls = {sid: name for sid, name in session.execute(
        select(db.Stall.stall_id, db.Stall.name).where(db.Stall.stall_id.in_(sids)))} if sids else {}
    blocking = _blocking_ids(session, {(r.stall_id, r.batch_code) for r in rows})
    return [to_json(r, tz, names=names, stalls=stalls, blocking=r.id in blocking) for r in rows]


def _blocking_ids(session: Session, pairs: Iterable[tuple[str, str]]) -> set[int]:
    pairs = list(pairs)
    if not pairs:
        return set()
    # Only these batches are ranked (the batch_code index), not the whole history.
    ins = db.Inspection
    ranked = _ranked(ins.batch_code.in_({b for _, b in pairs}),
                     tuple_(ins.stall_id, ins.batch_code).in_(pairs))
    return set(session.execute(select(ranked.c.id).where(
        ranked.c.rank == 1, ranked.c.result == "fail")).scalars())


def list_inspections(session: Session, *, day: dt.date | None = None, stall_id: str | None = None,
                     batch_code: str | None = None, result: Result | None = None,
                     limit: int | None = 100, offset: int = 0) -> list[db.Inspection]:
    """Tests, the latest first, filtered by market day, stall, batch and result."""
    ins = db.Inspection
    conditions = [c for c in (
        ins.local_day == day if day is not None else None,
        ins.stall_id == stall_id if stall_id is not None else None,
        ins.batch_code == batch_code if batch_code is not None else None,
        ins.result == result if result is not None else None) if c is not None]
    stmt = _latest_first(select(ins).where(*conditions)).limit(limit).offset(offset)
    return list(session.execute(stmt).scalars())


def for_batches(session: Session, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str],
                                                                          list[db.Inspection]]:
    """Every test of each (stall, batch), the latest first: what a trace page shows."""
    pairs = list(dict.fromkeys(pairs))
    out: dict[tuple[str, str], list[db.Inspection]] = {p: [] for p in pairs}
    if not pairs:
        return out
    ins = db.Inspection
    match = or_(*(and_(ins.stall_id == s, ins.batch_code == b) for s, b in pairs))
    for row in session.execute(_latest_first(select(ins).where(match))).scalars():
        out[(row.stall_id, row.batch_code)].append(row)
    return out


def summary(session: Session, tz: zoneinfo.ZoneInfo, day: dt.date) -> dict[str, Any]:
    """A market day's figures as markets publish them (DOMAIN.md §3): batches tested, passed,
    failed (by each batch's latest test that day) and the pass rate in %, with the failed
    batches themselves."""
    rows = list_inspections(session, day=day, limit=None)
    latest_of: dict[tuple[str, str], db.Inspection] = {}
    for row in rows:  # the latest first: the first seen of a batch is its latest
        latest_of.setdefault((row.stall_id, row.batch_code), row)
    failed = [r for r in latest_of.values() if r.result == "fail"]
    batches = len(latest_of)
    passed = batches - len(failed)
    return {
        "day": day.isoformat(), "tests": len(rows), "batches": batches, "passed": passed,
        "failed": len(failed),
        "pass_rate_percent": round(passed * 100 / batches, 1) if batches else None,
        "failed_batches": describe(session, failed, tz),
    }
