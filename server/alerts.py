"""Alerts for the market manager: raised once per ``key``, acknowledged by a manager.

Whoever notices something raises it here (ingest: broken chains and signatures,
receipt gaps; prices: far above the market median; inspections: a failed batch;
scale events; silent stalls).  The ``key`` says what the alert is about, so the same
finding raised again (a resent batch, a re-run check) is one alert, not many.

The detectors of this module, and what each costs:

- at ingest (``after_ingest``, in the upload's transaction): a chain that does not
  follow (``bad_chain``, one per receipt), a signature that does not verify
  (``bad_signature``, one per stall and day: a stall with a wrong key would raise one per
  sale), receipt numbers missing before a new receipt (``receipt_gap``).  Ingest already
  knows which receipts before its new ones are stored; only a receipt whose predecessor
  is missing costs one indexed query, for the range missing.
- at a scale-event upload (``after_scale_events``): a calibration, an error, an entry
  whose hash or chain is wrong, entry numbers missing (``scale_event``).
- on the server's periodic task (``run_checks``, every ``Settings.alert_check_s``):
  stalls gone silent (``stall_silent``: seen today, then not for ``silent_after_s``
  during market hours; read from ``stall_contact``, a row per stall), and a stall's real
  average sale price today over 1.5x the median of the other stalls' (``price_high``,
  from ``rollup_stall_item_day``, today's rows only, and only when today's sales changed).
  A posted price over 1.5x the median is raised when it is set (``server.catalogue``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import statistics
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import InstrumentedAttribute, Session

from server import db, partitions
from server.refusals import NotFound

if TYPE_CHECKING:
    from fastapi import FastAPI

    from server.auth import Actor
    from server.settings import Settings

logger = logging.getLogger(__name__)

KINDS = ("price_high", "receipt_gap", "bad_chain", "bad_signature", "scale_event",
         "stall_silent", "inspection_failed", "short_weight")


def raise_alert(session: Session, kind: str, key: str, detail: str, *, stall_id: str | None = None,
                plu: str | None = None, at: dt.datetime | None = None) -> db.Alert | None:
    """Add the alert ``kind:key`` in the caller's transaction; None if it was raised before."""
    if kind not in KINDS:
        raise ValueError(f"unknown alert kind {kind!r}")
    full_key = f"{kind}:{key}"[:128]
    if session.execute(select(db.Alert.id).where(db.Alert.key == full_key)).first() is not None:
        return None
    alert = db.Alert(key=full_key, kind=kind, stall_id=stall_id, plu=plu, detail=detail[:400],
                     raised_at=at or dt.datetime.now(dt.UTC))
    try:
        with session.begin_nested():  # another process may raise the same alert at once
            session.add(alert)
    except IntegrityError:
        return None
    logger.warning("alert %s: %s", full_key, detail)
    return alert


#: A stall's average sale price of an item today over this many times the median of the
#: other stalls' raises ``price_high`` (the posted prices' rule, ``server.catalogue``).
HIGH_FACTOR = Fraction(3, 2)
#: Scale audit entries a manager must see (``firmware_bridge.audit``): a calibration changes
#: what the scale weighs; an error may have priced a wrong weight.
SCALE_ALERT_KINDS = frozenset({"calibration", "calibration_mode", "error"})


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---- reading and acknowledging --------------------------------------------------------------

def listing(session: Session, *, open_only: bool = True, kind: str | None = None,
            limit: int = 200) -> list[db.Alert]:
    """The newest alerts first (the ``raised_at`` index)."""
    q = select(db.Alert).order_by(db.Alert.raised_at.desc(), db.Alert.id.desc()).limit(limit)
    if open_only:
        q = q.where(db.Alert.acknowledged_at.is_(None))
    if kind is not None:
        q = q.where(db.Alert.kind == kind)
    return list(session.execute(q).scalars())


def open_counts(session: Session) -> dict[str, int]:
    """Unacknowledged alerts per kind."""
    rows = session.execute(select(db.Alert.kind, func.count()).where(
        db.Alert.acknowledged_at.is_(None)).group_by(db.Alert.kind)).all()
    return {str(kind): int(n) for kind, n in rows}


def acknowledge(session: Session, actor: Actor, alert_id: int) -> db.Alert:
    """Mark an alert seen (once: a second acknowledgement keeps the first); caller commits."""
    alert = session.get(db.Alert, alert_id)
    if alert is None:
        raise NotFound(f"no alert {alert_id}")
    if alert.acknowledged_at is None:
        alert.acknowledged_at, alert.acknowledged_by = _now(), actor.who
        logger.info("alert %s acknowledged by %s", alert.key, actor.who)
    return alert


# ---- at ingest ------------------------------------------------------------------------------

def _gaps(session: Session, number: InstrumentedAttribute[int], where: ColumnElement[bool],
          candidates: Iterable[int]) -> Iterator[tuple[int, str, str]]:
    """For each new number whose predecessor is not known to be stored: the number, the key
    part of the range missing right before it (highest stored below + 1 .. number - 1) and
    that range as shown ("#3–#4"); one indexed query each."""
    for n in sorted(set(candidates)):
        below = session.execute(select(func.max(number)).where(where, number < n)).scalar()
        first, last = int(below or 0) + 1, n - 1
        if first <= last:
            yield n, f"{first}-{last}", f"#{first}" if first == last else f"#{first}–#{last}"


def after_ingest(session: Session, stall_id: str, stored: Iterable[tuple[int, list[str], dt.date]],
                 present: Collection[int]) -> None:
    """Alerts for the sales an upload just stored: ``stored`` is (receipt_no, flags, local
    day) of each, ``present`` every receipt number of the stall ingest knows is stored,
    which holds each new receipt's predecessor when that one is stored."""
    gaps = []
    for receipt_no, flags, day in stored:
        if "chain_mismatch" in flags:
            raise_alert(session, "bad_chain", f"{stall_id}:{receipt_no}",
                        f"摊位 {stall_id} 收据 #{receipt_no} 的哈希链与上一张不符（收据可能被删改）"
                        f" — receipt #{receipt_no} of stall {stall_id} does not chain to the one "
                        "before it", stall_id=stall_id)
        if "bad_signature" in flags:
            raise_alert(session, "bad_signature", f"{stall_id}:{day.isoformat()}",
                        f"摊位 {stall_id} 收据 #{receipt_no} 签名无效（{day.isoformat()} 第一张）"
                        f" — the signature of receipt #{receipt_no} of stall {stall_id} does not "
                        f"verify (the first on {day.isoformat()})", stall_id=stall_id)
        if receipt_no > 1 and receipt_no - 1 not in present:
            gaps.append(receipt_no)
    if not gaps:  # the usual upload: not even the filter below is built (7 % of the store's CPU)
        return
    for n, key, span in _gaps(session, db.Sale.receipt_no, db.Sale.stall_id == stall_id, gaps):
        raise_alert(session, "receipt_gap", f"{stall_id}:{key}",
                    f"摊位 {stall_id} 缺少收据 {span}（收到 #{n}）— stall {stall_id}: receipts "
                    f"{span} missing before #{n}", stall_id=stall_id)


def after_scale_events(session: Session, stall_id: str,
                       entries: Iterable[tuple[int, str, str, list[str]]]) -> None:
    """Alerts for the scale audit entries an upload just stored: (seq, kind, detail, flags)
    of each.  A calibration or an error, an entry that fails its hash or chain check, and
    entry numbers missing before a new one are each raised once."""
    new = list(entries)
    seqs = {seq for seq, _, _, _ in new}
    for seq, kind, detail, flags in new:
        if kind not in SCALE_ALERT_KINDS and not flags:
            continue
        what = "、".join([kind] + list(flags))
        raise_alert(session, "scale_event", f"{stall_id}:{seq}",
                    f"摊位 {stall_id} 秤审计记录 #{seq}：{what} {detail[:120]} — stall {stall_id} "
                    f"scale audit entry #{seq}: {what}", stall_id=stall_id)
    after_gap = [s for s in seqs if s > 1 and s - 1 not in seqs]
    for seq, key, span in _gaps(session, db.ScaleEvent.seq, db.ScaleEvent.stall_id == stall_id,
                                after_gap):
        raise_alert(session, "scale_event", f"{stall_id}:gap:{key}",
                    f"摊位 {stall_id} 秤审计记录缺少 {span} — stall {stall_id}: scale audit "
                    f"entries {span} missing before #{seq}", stall_id=stall_id)


# ---- the periodic checks --------------------------------------------------------------------

class Contacts:
    """When each stall last reached this process with its token (``server.auth.check_token``
    notes it): a dict write per request; the periodic check copies what changed to
    ``stall_contact``.  Every contact stays here too (one time per stall): a stall must not
    look offline while a round holds its contact and has not committed it yet (a shopper's
    page said "stall offline" for that moment, and a stall's long poll woke for nothing)."""

    def __init__(self) -> None:
        self._seen: dict[str, dt.datetime] = {}
        self._unstored: set[str] = set()
        self._lock = threading.Lock()

    def seen(self, stall_id: str, at: dt.datetime | None = None) -> None:
        with self._lock:
            self._seen[stall_id] = at or _now()
            self._unstored.add(stall_id)

    def take(self) -> dict[str, dt.datetime]:
        """The contacts not stored yet, to store now (``put_back`` them if that fails)."""
        with self._lock:
            taken, self._unstored = self._unstored, set()
            return {stall_id: self._seen[stall_id] for stall_id in taken}

    def peek(self) -> dict[str, dt.datetime]:
        """Every stall's last contact with this process (a page shows the later of these and
        the stored, which other processes may have written)."""
        with self._lock:
            return dict(self._seen)

    def put_back(self, seen: dict[str, dt.datetime]) -> None:
        """What ``take`` gave could not be stored: store it at the next round (the latest
        contact of each, which is never older)."""
        with self._lock:
            self._unstored.update(seen)


def store_contacts(session: Session, seen: dict[str, dt.datetime]) -> None:
    """Keep the later of the stored and the new time per stall (one statement)."""
    if not seen:
        return
    known = set(session.execute(select(db.Stall.stall_id).where(
        db.Stall.stall_id.in_(seen))).scalars())  # a stall removed meanwhile has no row to point at
    rows = [{"stall_id": s, "last_seen_at": at} for s, at in seen.items() if s in known]
    if not rows:
        return
    dialect_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = dialect_insert(db.StallContact)
    session.execute(stmt.on_conflict_do_update(
        index_elements=["stall_id"], set_={"last_seen_at": stmt.excluded.last_seen_at},
        where=db.StallContact.last_seen_at < stmt.excluded.last_seen_at), rows)


def check_silent(session: Session, settings: Settings, now: dt.datetime) -> int:
    """``stall_silent`` for each stall seen today (market hours) and not since
    ``silent_after_s``, while the market is open; the number raised."""
    local = now.astimezone(settings.tz)
    if not settings.market_opens <= local.time() < settings.market_closes:
        return 0
    opened = dt.datetime.combine(local.date(), settings.market_opens, settings.tz)
    quiet_since = now - dt.timedelta(seconds=settings.silent_after_s)
    rows = session.execute(select(db.StallContact).where(
        db.StallContact.last_seen_at >= opened, db.StallContact.last_seen_at < quiet_since)).scalars()
    raised = 0
    for row in rows:
        last = row.last_seen_at.astimezone(settings.tz)
        minutes = int((now - row.last_seen_at).total_seconds() // 60)
        if raise_alert(session, "stall_silent", f"{row.stall_id}:{row.last_seen_at.isoformat()}",
                       f"摊位 {row.stall_id} 自 {last:%H:%M} 起 {minutes} 分钟未连接服务器 — stall "
                       f"{row.stall_id} has not reached the server since {last:%H:%M} "
                       f"({minutes} min)", stall_id=row.stall_id, at=now) is not None:
            raised += 1
    return raised


def _per_unit(row: db.StallItemDay) -> tuple[Fraction, str] | None:
    """The stall's average price of the item that day: 分 per kg, or per piece."""
    if row.weight_g > 0:
        return Fraction(row.amount_fen * 1000, row.weight_g), "元/kg"
    if row.quantity > 0:
        return Fraction(row.amount_fen, row.quantity), "元/件"
    return None


def _yuan(fen: Fraction) -> str:
    cents = round(fen)
    return f"{cents // 100}.{cents % 100:02d}"


def check_sold_prices(session: Session, day: dt.date, now: dt.datetime) -> int:
    """``price_high`` for a stall whose average sale price of an item on ``day`` is over 1.5x
    the median of the other stalls' averages (``rollup_stall_item_day``); the number raised."""
    by_item: dict[tuple[str, str], dict[str, Fraction]] = defaultdict(dict)
    for row in session.execute(select(db.StallItemDay).where(
            db.StallItemDay.local_day == day)).scalars():
        avg = _per_unit(row)
        if avg is not None:
            by_item[(row.plu, avg[1])][row.stall_id] = avg[0]
    raised = 0
    for (plu, unit), prices in by_item.items():
        for stall_id, price in prices.items():
            others = [p for s, p in prices.items() if s != stall_id]
            if not others:
                continue
            median = Fraction(statistics.median(others))
            if price <= HIGH_FACTOR * median:
                continue
            if raise_alert(session, "price_high", f"sold:{day.isoformat()}:{stall_id}:{plu}",
                           f"摊位 {stall_id} 今日 PLU {plu} 成交均价 {_yuan(price)} {unit}，超过其他"
                           f"摊位中位价 {_yuan(median)} {unit} 的 1.5 倍 — stall {stall_id} sold PLU "
                           f"{plu} at {_yuan(price)} {unit} on average today, over 1.5x the median "
                           f"{_yuan(median)} of the other {len(others)} stalls",
                           stall_id=stall_id, plu=plu, at=now) is not None:
                raised += 1
    return raised


@dataclass
class Checker:
    """The periodic checks of one server process (``run_checks``)."""

    settings: Settings
    maker: Any  # sessionmaker[Session]
    contacts: Contacts
    write_lock: threading.Lock | None = None
    #: Makes the sales partitions around a day (``server.partitions.ensure``): once a day.
    ensure_partitions: Callable[[dt.date], object] | None = None
    #: Today's sales count when the sold prices were last checked: unchanged, nothing to do.
    _sold_seen: tuple[dt.date, int] | None = field(default=None, repr=False)
    _partitions_day: dt.date | None = field(default=None, repr=False)

    def run_once(self, now: dt.datetime | None = None) -> None:
        now = now or _now()
        day = now.astimezone(self.settings.tz).date()
        if self.ensure_partitions is not None and self._partitions_day != day:
            self.ensure_partitions(day)  # before the month turns, whatever the uptime
            self._partitions_day = day
        seen = self.contacts.take()
        try:
            with self.write_lock or nullcontext(), self.maker.begin() as session:
                store_contacts(session, seen)
                check_silent(session, self.settings, now)
                sales = session.execute(select(func.coalesce(func.sum(db.StallDay.sales), 0))
                                        .where(db.StallDay.local_day == day)).scalar_one()
                sold = (day, int(sales))
                if self._sold_seen != sold:
                    check_sold_prices(session, day, now)
        except SQLAlchemyError:
            self.contacts.put_back(seen)  # stored at the next round
            raise
        self._sold_seen = sold  # committed: no need to look again until today's sales change


async def run_checks(checker: Checker, interval_s: float) -> None:
    """Run the checks every ``interval_s`` seconds until cancelled; a failed round is logged
    and the next one runs as usual."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(checker.run_once)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a check must never stop the server's other work
            logger.exception("periodic alert checks failed; trying again in %.0f s", interval_s)


def start_checks(app: FastAPI) -> asyncio.Task[None]:
    """The server's background task of periodic checks (cancel it at shutdown)."""
    state = app.state
    checker = Checker(state.settings, state.sessionmaker, state.contacts, state.write_lock,
                      ensure_partitions=lambda day: partitions.ensure(state.engine, day))
    state.alert_checker = checker
    return asyncio.create_task(run_checks(checker, state.settings.alert_check_s),
                               name="wetmarket-alert-checks")
