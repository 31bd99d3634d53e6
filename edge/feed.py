"""The stall's copy of the market's feed: what it must apply (``GET /api/v1/feed``).

The market server publishes, per stall, the market catalogue, this stall's prices, the
caps, its specials (特价, with their windows) and the batches blocked at this stall by a
failed rapid test (农残快检), under a version that grows with every change
(``server.feedversion``).  The stall:

- asks on its own thread with ``If-None-Match`` (a 304 costs the server two index
  look-ups), long-polling (``?wait=``) so that a blocked batch arrives within about a
  second, with exponential back-off and jitter while the server is away;
- validates everything it receives (:class:`FeedDoc`, strict; the feed must be its own
  stall's): a garbled or hostile body is refused with a log line and changes nothing;
- keeps the last good feed in its data folder (``feed.json``, written atomically, the one
  before it kept as ``feed.prev.json``) and starts from it, so it sells on its last copy
  while the server is away; with no copy the config's ``[[catalogue]]`` is the seed;
- hands each new catalogue to the session, which applies it between baskets only
  (``Session.offer_catalogue``): a basket keeps the prices it was weighed with.

How a feed becomes the stall's catalogue (:func:`build_catalogue`): once the feed holds a
price of this stall, the stall sells exactly the market's active items it has a price for
(the config's batch codes, tare presets and inspection marks of the same PLU kept: the
market does not know them); before that (a market that has not entered this stall's
prices yet) it sells its config's items, with the market's caps, medians and specials of
a PLU in the same unit.  Blocked batches apply in both cases: an item whose batch is
blocked, or whose batch is unknown while a batch of its PLU is blocked at this stall, is
refused with the reason; so is an item priced above the market's cap.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.backoff import BackoffSender
from edge.catalogue import Catalogue, Plu, Promotion
from edge.files import fsync_dir
from edge.pricing import format_yuan
from edge.sale import MAX_AMOUNT_FEN, PriceUnit

logger = logging.getLogger(__name__)

#: The feed's format; the server's ETag names it, so a server speaking another format
#: never answers 304 to a copy of this one.
FORMAT: Literal[1] = 1
#: Bounds of what a stall accepts (a market has hundreds of items, not tens of thousands).
MAX_ENTRIES = 10_000
MAX_BODY_BYTES = 16 * 1024 * 1024
#: The longest long-poll the server holds (``?wait=``), in seconds.
MAX_WAIT_S = 30

FEED_FILE = "feed.json"
PREV_FILE = "feed.prev.json"

#: The patterns of the feed's fields, shared by what stalls exchange (edge.gallery_share).
PLU_PATTERN = r"^[0-9A-Za-z-]{1,16}$"
#: Text a screen or receipt shows: no control, format (a right-to-left override) or
#: line-separator characters, whoever sent it.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]*$"
STALL_PATTERN = r"^[A-Za-z0-9_-]{1,16}$"


class _Doc(BaseModel):
    # Strict: a price is a JSON integer, never "300" or 300.0.  Fields added by a newer
    # server are ignored; the format number says when the meaning changes.
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class FeedItem(_Doc):
    """An active item of the market catalogue."""

    plu: str = Field(pattern=PLU_PATTERN)
    name: str = Field(min_length=1, pattern=TEXT_PATTERN, max_length=64,
                      description="Chinese name, as on receipts")
    name_en: str = Field(pattern=TEXT_PATTERN, max_length=64)
    category: str = Field(pattern=TEXT_PATTERN, max_length=32)
    price_unit: PriceUnit = Field(description="kg, 500g or piece: never 斤")
    picture: str | None = Field(None, pattern=TEXT_PATTERN, max_length=256)
    origin: str | None = Field(None, pattern=TEXT_PATTERN, max_length=64)
    label: str | None = Field(None, pattern=TEXT_PATTERN, max_length=64, description="the recognizer's label")
    cap_fen: int | None = Field(None, gt=0, le=MAX_AMOUNT_FEN,
                                description="the market's price cap per price_unit")
    market_median_fen: int | None = Field(None, gt=0, le=MAX_AMOUNT_FEN,
                                          description="median of the stalls' current prices")


class FeedPrice(_Doc):
    """This stall's price of an item, per the item's ``price_unit``."""

    plu: str = Field(pattern=PLU_PATTERN)
    unit_price_fen: int = Field(gt=0, le=MAX_AMOUNT_FEN)


class FeedSpecial(_Doc):
    """A special (特价) of this stall: its price from ``starts_at`` until before ``ends_at``."""

    id: int = Field(ge=0)
    plu: str = Field(pattern=PLU_PATTERN)
    special_price_fen: int = Field(gt=0, le=MAX_AMOUNT_FEN)
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    title: str | None = Field(None, pattern=TEXT_PATTERN, max_length=64)


class FeedBlock(_Doc):
    """A batch at this stall whose latest rapid test failed: not for sale."""

    batch_code: str = Field(min_length=1, pattern=TEXT_PATTERN, max_length=32)
    plu: str = Field(pattern=PLU_PATTERN)
    reason: str = Field(min_length=1, pattern=TEXT_PATTERN, max_length=1000,
                        description="Chinese / English, for screens")
    method: str = Field(pattern=TEXT_PATTERN, max_length=64)
    inhibition_permille: int | None = Field(None, ge=0, le=1000,
                                            description="enzyme inhibition in 0.1 %")
    tester: str = Field(pattern=TEXT_PATTERN, max_length=64)
    tested_at: AwareDatetime
    inspection_id: int = Field(ge=0)


class FeedDoc(_Doc):
    """``GET /api/v1/feed``: everything one stall must apply, at one version."""

    format: Literal[1] = Field(description="the feed's format (1)")
    version: int = Field(ge=0, description="server.feedversion: grows with every change")
    stall_id: str = Field(pattern=STALL_PATTERN)
    server_time: AwareDatetime = Field(description="the server's clock, in market time")
    timezone: str = Field(pattern=TEXT_PATTERN, max_length=64, description="the market's zone")
    items: list[FeedItem] = Field(max_length=MAX_ENTRIES, description="active items, by PLU")
    prices: list[FeedPrice] = Field(max_length=MAX_ENTRIES, description="this stall's prices")
    specials: list[FeedSpecial] = Field(max_length=MAX_ENTRIES,
                                        description="this stall's specials not yet over")
    blocked: list[FeedBlock] = Field(max_length=MAX_ENTRIES,
                                     description="batches blocked for sale at this stall")

    @model_validator(mode="after")
    def _consistent(self) -> FeedDoc:
        plus = [item.plu for item in self.items]
        if len(set(plus)) != len(plus):
            raise ValueError("an item appears twice")
        priced = [price.plu for price in self.prices]
        if len(set(priced)) != len(priced):
            raise ValueError("a price appears twice")
        known = set(plus)
        for what, plu in [*(("price", p) for p in priced),
                          *(("special", s.plu) for s in self.specials)]:
            if plu not in known:
                raise ValueError(f"{what} of PLU {plu}, which is not in the items")
        for special in self.specials:
            if special.ends_at <= special.starts_at:
                raise ValueError(f"special {special.id} ends before it starts")
        return self


class SavedFeed(BaseModel):
    """What ``feed.json`` holds: the feed and the ETag it came with."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    etag: str = Field(min_length=1, max_length=200)
    saved_at: AwareDatetime
    feed: FeedDoc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "feed"
    return f"{where}: {err['msg']}"


def parse_feed(body: bytes, stall_id: str) -> FeedDoc:
    """The feed in ``body``, checked; :class:`FeedRefused` says what is wrong."""
    if len(body) > MAX_BODY_BYTES:
        raise FeedRefused(f"{len(body)} bytes, more than {MAX_BODY_BYTES}")
    try:
        doc = FeedDoc.model_validate_json(body)
    except ValidationError as exc:
        raise FeedRefused(_first_error(exc)) from None
    if doc.stall_id != stall_id:
        raise FeedRefused(f"it is stall {doc.stall_id}'s feed, not {stall_id}'s")
    return doc


class FeedRefused(ValueError):
    """A feed (received or saved) that fails its checks; nothing of it is applied."""


# ---- the feed as the stall's catalogue ----------------------------------------------------


def cap_reason(unit_price_fen: int, cap_fen: int, price_unit: str) -> str:
    unit = "个" if price_unit == "piece" else price_unit
    return (f"单价 {format_yuan(unit_price_fen)}/{unit} 高于市场限价 {format_yuan(cap_fen)}/{unit}，"
            f"调价前禁止销售 / unit price above the market's cap "
            f"{format_yuan(cap_fen)}/{price_unit}: not for sale until it is lowered")


def _specials(doc: FeedDoc, plu: str, unit_price_fen: int) -> tuple[Promotion, ...]:
    """The item's specials below its price (one at or above it would be no special)."""
    out = []
    for s in doc.specials:
        if s.plu != plu:
            continue
        if s.special_price_fen >= unit_price_fen:
            logger.info("special %d of PLU %s (%d 分) is not below its price %d 分: ignored",
                        s.id, plu, s.special_price_fen, unit_price_fen)
            continue
        out.append(Promotion(unit_price_fen=s.special_price_fen, starts_at=s.starts_at,
                             ends_at=s.ends_at, title=s.title))
    return tuple(out)


def _block_reason(blocked: dict[str, list[FeedBlock]], plu: str, batch_code: str | None) -> str | None:
    batches = blocked.get(plu, [])
    if batch_code is not None:
        batches = [b for b in batches if b.batch_code == batch_code]
    # An item of unknown batch could be the failed one: refused while any batch of it is.
    return max(batches, key=lambda b: b.tested_at).reason if batches else None


def build_catalogue(doc: FeedDoc | None, seed: Iterable[Plu]) -> tuple[Catalogue, dict[str, str]]:
    """The stall's catalogue and recognizer labels (label -> PLU) from ``doc`` and the seed."""
    seed_items = {item.code: item for item in seed}
    if doc is None:
        return Catalogue(seed_items.values()), _labels(seed_items.values())
    items = {item.plu: item for item in doc.items}
    blocked: dict[str, list[FeedBlock]] = {}
    for block in doc.blocked:
        blocked.setdefault(block.plu, []).append(block)
    out: list[Plu] = []
    if doc.prices:  # the market prices this stall: its catalogue is the market's
        for price in doc.prices:
            item, local = items[price.plu], seed_items.get(price.plu)
            out.append(_market_item(doc, item, price.unit_price_fen, local, blocked))
    else:  # not yet: the config's items, with what the market says of the same PLU
        for local in seed_items.values():
            market = items.get(local.code)
            if market is not None and market.price_unit != local.price_unit:
                market = None  # its cap and specials are in another unit
            out.append(_seed_item(doc, local, market, blocked))
    return Catalogue(out), _labels(out)


def _labels(items: Iterable[Plu]) -> dict[str, str]:
    return {item.label: item.code for item in items if item.label}


def _market_item(doc: FeedDoc, item: FeedItem, price_fen: int, local: Plu | None,
                 blocked: dict[str, list[FeedBlock]]) -> Plu:
    batch = local.batch_code if local is not None else None
    reason = _block_reason(blocked, item.plu, batch)
    cap = item.cap_fen
    if cap is not None and price_fen > cap:
        reason, cap = reason or cap_reason(price_fen, cap, item.price_unit), None
    return Plu(code=item.plu, name_zh=item.name, name_en=item.name_en or item.name,
               price_unit=item.price_unit, unit_price_fen=price_fen, origin=item.origin,
               batch_code=batch, inspection=local.inspection if local is not None else "not-tested",
               specials=_specials(doc, item.plu, price_fen),
               tare_presets_g=local.tare_presets_g if local is not None else (),
               price_cap_fen=cap, market_median_fen=item.market_median_fen,
               label=item.label or (local.label if local is not None else None),
               blocked_reason=reason)


def _seed_item(doc: FeedDoc, local: Plu, market: FeedItem | None,
               blocked: dict[str, list[FeedBlock]]) -> Plu:
    update: dict[str, Any] = {"blocked_reason": _block_reason(blocked, local.code, local.batch_code)}
    if market is not None:
        cap = market.cap_fen
        if cap is not None and local.unit_price_fen > cap:
            update["blocked_reason"] = update["blocked_reason"] or cap_reason(
                local.unit_price_fen, cap, local.price_unit)
            cap = None
        update |= {"price_cap_fen": cap, "market_median_fen": market.market_median_fen,
                   "specials": _specials(doc, local.code, local.unit_price_fen)}
    # As a Plu (the config's entry class reads other key names).
    return Plu.model_validate({**local.model_dump(include=set(Plu.model_fields)), **update})


# ---- the saved copy ------------------------------------------------------------------------


def save_feed(folder: Path, etag: str, doc: FeedDoc) -> None:
    """Keep ``doc`` as ``feed.json`` (the one before as ``feed.prev.json``), atomically:
    written to a temporary file, synced, renamed; a crash leaves one or the other whole."""
    saved = SavedFeed(etag=etag, saved_at=dt.datetime.now(dt.UTC), feed=doc)
    tmp = folder / f"{FEED_FILE}.tmp"
    with open(tmp, "wb") as f:
        f.write(saved.model_dump_json(indent=1).encode())
        f.flush()
        os.fsync(f.fileno())
    current = folder / FEED_FILE
    if current.exists():
        os.replace(current, folder / PREV_FILE)
    os.replace(tmp, current)
    fsync_dir(folder)


def load_saved(folder: Path, stall_id: str) -> SavedFeed | None:
    """The newest saved feed that reads and checks, ``feed.json`` first; each one that does
    not is named in a log line (and left in place for a look)."""
    for name in (FEED_FILE, PREV_FILE):
        path = folder / name
        if not path.exists():
            continue
        try:
            saved = SavedFeed.model_validate_json(path.read_bytes())
        except OSError as exc:
            logger.error("saved feed %s cannot be read (%s): not used", path, exc)
            continue
        except ValidationError as exc:
            logger.error("saved feed %s is damaged (%s): not used", path, _first_error(exc))
            continue
        if saved.feed.stall_id != stall_id:
            logger.error("saved feed %s is stall %s's, not %s's: not used", path,
                         saved.feed.stall_id, stall_id)
            continue
        return saved
    return None


# ---- the client --------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedState:
    """What the stall holds: the screens show it (version, when, and whether it is current)."""

    version: int | None  # None: the config's seed, no feed yet
    etag: str | None
    server_time: dt.datetime | None


OnCatalogue = Callable[[Catalogue, dict[str, str], FeedState], object]


class FeedClient(BackoffSender):
    """Pulls the feed on its own thread (the outbox's loop, ``edge.backoff``: back-off with
    jitter while the server is away); hands each new catalogue to ``on_catalogue``."""

    #: A disk that cannot take the copy is tried again like a server away.
    retry_errors = (httpx.HTTPError, OSError)
    kept = "the stall sells on its last copy"

    def __init__(self, data_dir: Path, server_url: str, token: str, *, stall_id: str,
                 seed: Iterable[Plu], wait_s: float = 25.0, interval_s: float = 10.0,
                 max_backoff_s: float = 60.0, timeout_s: float = 10.0,
                 stop_event: threading.Event | None = None) -> None:
        self.wait_s = min(wait_s, MAX_WAIT_S)
        # A long poll paces itself (a 304 comes after wait_s): ask again a second after
        # an answer; without long poll, every interval_s.
        super().__init__(f"feed-{stall_id}", server_url, token,
                         poll_s=1.0 if self.wait_s >= 1 else interval_s,
                         max_backoff_s=max_backoff_s, timeout_s=timeout_s, stop_event=stop_event)
        # The read lasts as long as the server holds the long poll, and then some.
        self._client.timeout = httpx.Timeout(timeout_s, read=timeout_s + self.wait_s)
        self.data_dir = data_dir
        self.stall_id = stall_id
        self.seed = list(seed)
        self.on_catalogue: OnCatalogue | None = None
        self.state = FeedState(None, None, None)
        #: Why the last feed received was refused (None once a good one arrives).
        self.refused: str | None = None
        self._refused_key: tuple[str | None, str] | None = None

    def initial(self) -> tuple[Catalogue, dict[str, str]]:
        """The catalogue to start from: the saved feed's, else the config's seed."""
        saved = load_saved(self.data_dir, self.stall_id)
        if saved is not None:
            try:
                catalogue, labels = build_catalogue(saved.feed, self.seed)
            except Exception as exc:  # noqa: BLE001 - a bad copy must not stop the stall
                logger.error("saved feed version %d cannot be applied (%s): starting from the "
                             "config's catalogue", saved.feed.version, exc)
            else:
                self.state = FeedState(saved.feed.version, saved.etag, saved.feed.server_time)
                logger.info("starting from the saved feed, version %d", saved.feed.version)
                return catalogue, labels
        elif (self.data_dir / FEED_FILE).exists() or (self.data_dir / PREV_FILE).exists():
            logger.error("no usable saved feed: starting from the config's catalogue")
        return build_catalogue(None, self.seed)

    def start(self, on_catalogue: OnCatalogue | None = None) -> None:
        self.on_catalogue = on_catalogue or self.on_catalogue
        super().start()

    def stop(self, drain_s: float = 2.0) -> None:
        """Stop without a last attempt: nothing waits to be sent.  A long poll in flight
        ends when the server answers (the thread is a daemon); its client closes then."""
        self.stop_now(drain_s)

    def flush_once(self) -> int:
        return int(self.poll_once(self.wait_s))

    def poll_once(self, wait_s: float = 0.0) -> bool:
        """One request; True when a new feed was received, checked, saved and handed on.

        Raises ``httpx.HTTPError`` when the server cannot be reached or answers an error.
        """
        headers = {"If-None-Match": self.state.etag} if self.state.etag else {}
        params = {"wait": int(wait_s)} if wait_s >= 1 else {}
        with self._client.stream("GET", "/api/v1/feed", headers=headers, params=params) as r:
            if r.status_code == 304:
                return False
            r.raise_for_status()
            body = bytearray()
            for chunk in r.iter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    self._refuse(f"body over {MAX_BODY_BYTES} bytes", r.headers.get("etag"))
                    return False
            etag = r.headers.get("etag")
        if not etag or len(etag) > 200:
            self._refuse("answer without a usable ETag")
            return False
        try:
            doc = parse_feed(bytes(body), self.stall_id)
            catalogue, labels = build_catalogue(doc, self.seed)
        except FeedRefused as exc:
            self._refuse(str(exc), etag)
            return False
        except Exception as exc:  # noqa: BLE001 - whatever a hostile feed provokes, refuse it
            self._refuse(f"cannot be applied: {exc}", etag)
            return False
        save_feed(self.data_dir, etag, doc)
        self.refused, self._refused_key = None, None
        self.state = FeedState(doc.version, etag, doc.server_time)
        skew = abs((dt.datetime.now(dt.UTC) - doc.server_time).total_seconds())
        if skew > 120:
            logger.warning("this stall's clock is %.0f s off the market server's: specials start "
                           "and end by the stall's clock", skew)
        logger.info("feed version %d received: %d items, %d specials, %d blocked batches",
                    doc.version, len(catalogue), len(doc.specials), len(doc.blocked))
        if self.on_catalogue is not None:
            self.on_catalogue(catalogue, labels, self.state)
        return True

    def _refuse(self, why: str, etag: str | None = None) -> None:
        # Once per feed (its ETag) and reason: a server that keeps sending the same bad
        # feed must not flood the log.
        if (etag, why) != self._refused_key:
            logger.error("feed from the market server refused, the stall keeps version %s: %s",
                         self.state.version, why)
        self._refused_key = (etag, why)
        self.refused = why
