"""The market catalogue, each stall's prices and the market's price caps (调价管理, 明码标价).

Plain functions on a SQLAlchemy ``Session`` and the ``Actor`` making the change, shared by
the JSON API (``server/routes/catalogue.py``) and the manager pages.  Each works inside the
caller's transaction and never commits: the history rows, the alert and the stalls' feed
version (``server.feedversion.bump``) of a change commit with it or not at all.  Refusals
are ``server.refusals`` exceptions, carrying a Chinese and an English reason.

The rules (docs/architecture.md, "Catalogue, prices and caps"):

- Prices are per ``kg``, per ``500g`` or per ``piece``: never per 斤 or 两.
- Every change of a stall's price or of a cap writes one ``PriceChange`` row (who, when,
  old, new, why, and the unit both are in); rows are never updated or deleted.  Setting
  the price a stall already has records nothing (``changed`` is false).
- A stall sets only its own prices; a manager (or the admin token) any stall's, and must
  say why.  Caps are the manager's.  A price above the item's cap is refused.
- Lowering a cap below prices stalls hold is refused, naming them, unless the manager asks
  to lower those prices to the cap (``lower_prices``): each is then a recorded change.
- An item's ``price_unit`` changes only while no stall holds a price of it (or with
  ``remove_prices``, which removes them, recorded); a cap in the old unit is cleared and
  the new one set, two rows.  So a row's ``old_fen`` and ``new_fen`` are always in its
  ``price_unit``.
- A price over 1.5x the median of the other stalls' prices of the item raises a
  ``price_high`` alert (once per stall, item and price).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edge.pricing import PRICE_UNITS, format_yuan
from edge.sale import MAX_AMOUNT_FEN
from server import db, feedversion
from server.alerts import raise_alert
from server.auth import Actor
from server.fields import PLU_PATTERN, Text64, Text200
from server.refusals import Conflict, NotFound, Refused

logger = logging.getLogger(__name__)

#: A price over this times the median of the other stalls' prices of the item is an alert.
HIGH_FACTOR = Fraction(3, 2)
#: Files under the server's static folder a picture may name (``/static/...``).
STATIC = Path(__file__).resolve().parent / "static"
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".svg")
_STATIC_PATH = re.compile(r"^/static/[A-Za-z0-9._/-]+$")
_URL = TypeAdapter(AnyHttpUrl)
_URL_TEXT = re.compile(r"^https?://[\x21-\x7e]+$")
#: Units a vendor may mean by habit; refused with the reason (DOMAIN.md §2, 明码标价).
_CHINESE_UNITS = {"斤", "jin", "两", "liang", "市斤", "公斤", "千克", "克", "g", "500克"}
#: Item fields a PATCH may not set to null (the table needs them).
_REQUIRED = ("name", "name_en", "category", "price_unit", "active")


class Forbidden(Refused):
    """The actor may not do this (a stall touching another stall's price)."""

    status = 403


class ReasonMissing(Refused):
    """A change that must say why (a manager's price, a cap) came without ``why``."""


def refusal(cls: type[Refused], zh: str, en: str) -> Refused:
    """A refusal whose message a Chinese and an English reader both read."""
    return cls(f"{zh} — {en}")


# ---- what comes in ---------------------------------------------------------------------


def _unit(value: Any) -> Any:
    if isinstance(value, str) and value not in PRICE_UNITS and (
            value.strip().lower() in _CHINESE_UNITS or "斤" in value or "两" in value):
        raise ValueError(f"计价单位不能是 {value}：明码标价只用元/千克、元/500克或元/个 — price unit "
                         f"{value!r} is not allowed: prices are per kg, per 500g or per piece, "
                         "never per 斤 or 两")
    return value


def _category(value: str) -> str:
    if len(value) > 32:
        raise ValueError(f"类别最多 32 个字符 — a category is at most 32 characters, not {len(value)}")
    return value


def _picture(value: str) -> str:
    if value.startswith(("http://", "https://")):
        if not _URL_TEXT.match(value):
            raise ValueError("图片网址只能含可见 ASCII 字符（其余请百分号编码） — picture URL must be "
                             "printable ASCII without spaces (percent-encode the rest)")
        try:
            _URL.validate_python(value)
        except ValidationError as exc:
            raise ValueError(f"图片网址无效 — picture is not a valid URL: "
                             f"{exc.errors()[0]['msg']}") from None
        return value
    if not _STATIC_PATH.match(value):
        raise ValueError("图片须为 http(s) 网址或 /static/ 下的文件 — picture must be an http(s) URL "
                         "or a path under /static/ (letters, digits, . _ - /)")
    parts = value.removeprefix("/static/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError("图片路径无效 — picture path must not hold empty, . or .. parts")
    path = STATIC.joinpath(*parts)
    if path.suffix.lower() not in PICTURE_SUFFIXES:
        raise ValueError(f"图片须为 {'、'.join(PICTURE_SUFFIXES)} 文件 — picture must be one of "
                         f"{', '.join(PICTURE_SUFFIXES)}")
    if not path.resolve().is_relative_to(STATIC.resolve()) or not path.is_file():
        raise ValueError(f"服务器的静态文件中没有 {value} — no file {value} among the server's "
                         "static files")
    return value


Fen = Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT_FEN, description="分, a JSON integer")]
Name = Annotated[Text64, Field(description="Chinese name, as on receipts")]
NameEn = Annotated[Text64, Field(description="English name")]
Category = Annotated[Text64, AfterValidator(_category), Field(description="e.g. 水果, 蔬菜, 水产; at most "
                                                              "32 characters")]
Origin = Annotated[Text64, Field(description="产地")]
Label = Annotated[Text64, Field(description="the recognizer's label of this item")]
Why = Annotated[Text200, Field(description="the reason, kept in the price history")]
Unit = Annotated[Literal["kg", "500g", "piece"], BeforeValidator(_unit)]
Picture = Annotated[str, Field(min_length=1, max_length=256,
                               description="an http(s) URL or a path under /static/"),
                    AfterValidator(_picture)]


class ItemCreate(BaseModel):
    """A new catalogue item."""

    model_config = ConfigDict(extra="forbid")
    plu: str = Field(pattern=PLU_PATTERN, description="the PLU code every stall uses")
    name: Name
    name_en: NameEn
    category: Category
    price_unit: Unit
    picture: Picture | None = None
    origin: Origin | None = None
    label: Label | None = None
    cap_fen: Fen | None = Field(None, description="the market's price cap per price_unit, in 分")
    why: Why | None = Field(None, description="kept with the cap in the price history")


class ItemUpdate(BaseModel):
    """Changes to an item: only the fields sent change; ``null`` clears an optional field."""

    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    name_en: NameEn | None = None
    category: Category | None = None
    price_unit: Unit | None = None
    picture: Picture | None = None
    origin: Origin | None = None
    label: Label | None = None
    cap_fen: Fen | None = None
    active: StrictBool | None = Field(None, description="false takes the item off sale; items "
                                      "are never deleted, sales and history name them")
    why: Why | None = Field(None, description="required when the cap or the stalls' prices change")
    lower_prices: StrictBool = Field(False, description="lower the stall prices above a new, "
                                     "lower cap to it (each recorded) instead of refusing")
    remove_prices: StrictBool = Field(False, description="with a new price_unit: remove every "
                                      "stall's price of the item (each recorded) instead of refusing")

    @model_validator(mode="after")
    def _no_null_for_required(self) -> ItemUpdate:
        nulled = [f for f in _REQUIRED if f in self.model_fields_set and getattr(self, f) is None]
        if nulled:
            raise ValueError(f"{', '.join(nulled)} 不能为空 — {', '.join(nulled)} cannot be null")
        return self


class PriceSet(BaseModel):
    """A stall's price of an item, per the item's price unit."""

    model_config = ConfigDict(extra="forbid")
    unit_price_fen: Fen
    why: Why | None = Field(None, description="required from a manager, optional from the stall")


# ---- reading ---------------------------------------------------------------------------


@cache
def model_labels() -> frozenset[str] | None:
    """The shipped recognizer's labels (``model/weights/recognizer.json``), read as JSON
    without importing the model package; None where the file is not installed."""
    spec = importlib.util.find_spec("model")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "recognizer.json"
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return frozenset(str(label) for label in labels)


def label_known(label: str | None) -> bool | None:
    """Whether the shipped recognizer knows ``label``; None without a label or a model.  A
    label it does not know is kept: a stall may teach it to its gallery."""
    labels = model_labels()
    return None if label is None or labels is None else label in labels


def list_items(session: Session, *, category: str | None = None,
               active: bool | None = None) -> Sequence[db.Item]:
    query = select(db.Item).order_by(db.Item.plu)
    if category is not None:
        query = query.where(db.Item.category == category)
    if active is not None:
        query = query.where(db.Item.active == active)
    return session.execute(query).scalars().all()


def get_item(session: Session, plu: str, *, lock: bool = False) -> db.Item:
    """The item; ``lock`` holds its row to the end of the transaction on PostgreSQL, which
    serialises every change of its prices and cap (SQLite's writers are serialised anyway)."""
    item = session.get(db.Item, plu, with_for_update=lock or None)
    if item is None:
        raise refusal(NotFound, f"目录中没有商品 {plu}", f"no item {plu} in the catalogue")
    return item


def _stall(session: Session, stall_id: str) -> db.Stall:
    stall = session.get(db.Stall, stall_id)
    if stall is None:
        raise refusal(NotFound, f"没有摊位 {stall_id}", f"no stall {stall_id}")
    return stall


def current_prices(session: Session, *, stall_id: str | None = None,
                   plu: str | None = None) -> Sequence[Row[db.StallPrice, db.Item]]:
    """Every stall's current price of every active item (明码标价 is public), by stall and PLU."""
    query = (select(db.StallPrice, db.Item).join(db.Item, db.Item.plu == db.StallPrice.plu)
             .where(db.Item.active.is_(True)).order_by(db.StallPrice.stall_id, db.StallPrice.plu))
    if stall_id is not None:
        _stall(session, stall_id)
        query = query.where(db.StallPrice.stall_id == stall_id)
    if plu is not None:
        query = query.where(db.StallPrice.plu == plu)
    return session.execute(query).all()


def history(session: Session, *, plu: str | None = None, stall_id: str | None = None,
            kind: str | None = None, before: int | None = None,
            limit: int = 50) -> Sequence[db.PriceChange]:
    """Price and cap changes, newest first; ``before`` (a change's id) pages further back."""
    query = select(db.PriceChange).order_by(db.PriceChange.id.desc()).limit(limit)
    if plu is not None:
        query = query.where(db.PriceChange.plu == plu)
    if stall_id is not None:
        query = query.where(db.PriceChange.stall_id == stall_id)
    if kind is not None:
        query = query.where(db.PriceChange.kind == kind)
    if before is not None:
        query = query.where(db.PriceChange.id < before)
    return session.execute(query).scalars().all()


# ---- changing --------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _require_manager(actor: Actor) -> None:
    if actor.kind == "stall":
        raise refusal(Forbidden, "只有市场管理员可以修改商品目录和限价",
                      "only a market manager may change the catalogue and the caps")


def _reason(why: str | None, what_zh: str, what_en: str) -> str:
    if why is None:
        raise refusal(ReasonMissing, f"{what_zh}须填写原因（why）", f"{what_en} needs a reason (why)")
    return why


def _record(session: Session, actor: Actor, item: db.Item, *, kind: str, stall_id: str | None,
            old: int | None, new: int | None, why: str, at: dt.datetime) -> None:
    session.add(db.PriceChange(at=at, plu=item.plu, stall_id=stall_id, kind=kind,
                               price_unit=item.price_unit, old_fen=old, new_fen=new,
                               who=actor.who, why=why[:200]))


def _per_unit(fen: int, item: db.Item) -> str:
    return f"{format_yuan(fen)}/{'个' if item.price_unit == 'piece' else item.price_unit}"


def create_item(session: Session, actor: Actor, data: ItemCreate) -> db.Item:
    _require_manager(actor)
    now = _now()
    item = db.Item(plu=data.plu, name=data.name, name_en=data.name_en, category=data.category,
                   price_unit=data.price_unit, picture=data.picture, origin=data.origin,
                   label=data.label, cap_fen=data.cap_fen, active=True, created_at=now,
                   updated_at=now)
    exists = refusal(Conflict, f"商品 {data.plu} 已在目录中", f"item {data.plu} already exists")
    if session.get(db.Item, data.plu) is not None:
        raise exists
    try:
        with session.begin_nested():  # another request may have created it since
            session.add(item)
    except IntegrityError:
        raise exists from None
    if data.cap_fen is not None:
        _record(session, actor, item, kind="cap", stall_id=None, old=None, new=data.cap_fen,
                why=data.why or "新建商品时设定 — set when the item was created", at=now)
    feedversion.bump(session)
    logger.info("%s created item %s", actor.who, data.plu)
    return item


def update_item(session: Session, actor: Actor, plu: str, changes: ItemUpdate) -> bool:
    """Apply ``changes`` (the fields sent); whether anything changed."""
    _require_manager(actor)
    item = get_item(session, plu, lock=True)
    sent = changes.model_dump(include=changes.model_fields_set - {"why", "lower_prices",
                                                                  "remove_prices"})
    now = _now()
    changed = False
    unit = sent.pop("price_unit", item.price_unit)
    if unit != item.price_unit:  # clears the cap: a cap sent with it is in the new unit
        _change_unit(session, actor, item, unit, changes, now)
        changed = True
    if "cap_fen" in sent and (cap := sent.pop("cap_fen")) != item.cap_fen:
        why = _reason(changes.why, "修改限价", "changing a cap")
        _set_cap(session, actor, item, cap, why, lower_prices=changes.lower_prices, at=now)
        changed = True
    for field, value in sent.items():
        if getattr(item, field) != value:
            setattr(item, field, value)
            changed = True
    if changed:
        item.updated_at = now
        feedversion.bump(session)
        logger.info("%s changed item %s: %s", actor.who, plu, sorted(changes.model_fields_set))
    return changed


def _change_unit(session: Session, actor: Actor, item: db.Item, unit: str, changes: ItemUpdate,
                 at: dt.datetime) -> None:
    """Prices are per unit: the stall prices and the cap in the old one must go first."""
    held = session.execute(select(db.StallPrice).where(db.StallPrice.plu == item.plu)
                           .order_by(db.StallPrice.stall_id)).scalars().all()
    why = f"计价单位 {item.price_unit}→{unit} — price unit {item.price_unit} to {unit}"
    if held and not changes.remove_prices:
        stalls = ", ".join(p.stall_id for p in held[:10]) + (" ..." if len(held) > 10 else "")
        raise refusal(Conflict, f"{len(held)} 个摊位有 {item.plu} 按 {item.price_unit} 的价格（{stalls}），"
                      "请先删除这些价格或设 remove_prices",
                      f"{len(held)} stalls hold prices of {item.plu} per {item.price_unit} ({stalls}); "
                      "remove them first, or send remove_prices: true")
    if held:
        why = f"{why}: {_reason(changes.why, '删除摊位价格', 'removing stall prices')}"
    for price in held:
        _record(session, actor, item, kind="price", stall_id=price.stall_id,
                old=price.unit_price_fen, new=None, why=why, at=at)
        session.delete(price)
    if item.cap_fen is not None:
        _record(session, actor, item, kind="cap", stall_id=None, old=item.cap_fen, new=None,
                why=why, at=at)
        item.cap_fen = None
    item.price_unit = unit
    session.flush()


def _set_cap(session: Session, actor: Actor, item: db.Item, cap: int | None, why: str, *,
             lower_prices: bool, at: dt.datetime) -> None:
    if cap is not None:
        above = session.execute(
            select(db.StallPrice).where(db.StallPrice.plu == item.plu,
                                        db.StallPrice.unit_price_fen > cap)
            .order_by(db.StallPrice.stall_id)).scalars().all()
        if above and not lower_prices:
            listed = ", ".join(f"{p.stall_id} {_per_unit(p.unit_price_fen, item)}" for p in above[:10])
            raise refusal(Conflict, f"{len(above)} 个摊位的价格高于新限价 {_per_unit(cap, item)}"
                          f"（{listed}）；先调低这些价格，或设 lower_prices 一并调到限价",
                          f"{len(above)} stall prices are above the new cap "
                          f"{_per_unit(cap, item)} ({listed}); lower them first, or send "
                          "lower_prices: true to lower them to the cap")
        for price in above:
            _record(session, actor, item, kind="price", stall_id=price.stall_id,
                    old=price.unit_price_fen, new=cap, at=at,
                    why=f"限价下调至 {_per_unit(cap, item)} — cap lowered: {why}")
            price.unit_price_fen, price.updated_at = cap, at
    _record(session, actor, item, kind="cap", stall_id=None, old=item.cap_fen, new=cap, why=why, at=at)
    item.cap_fen = cap


@dataclass(frozen=True, slots=True)
class PriceResult:
    """What setting a price did: ``changed`` false when the stall already had it;
    ``price_high`` when it is over 1.5x the other stalls' median (an alert was raised)."""

    stall_id: str
    plu: str
    unit_price_fen: int | None
    changed: bool
    price_high: bool = False


def _may_touch(actor: Actor, stall_id: str, why: str | None) -> str:
    """The reason to record; a stall touches only its own prices, a manager says why."""
    if actor.kind == "stall":
        if actor.name != stall_id:
            raise refusal(Forbidden, f"摊位 {actor.name} 不能修改摊位 {stall_id} 的价格",
                          f"stall {actor.name} may not change the prices of stall {stall_id}")
        return why or ""
    return _reason(why, "管理员改价", "a manager's price change")


def set_price(session: Session, actor: Actor, stall_id: str, plu: str, unit_price_fen: int,
              why: str | None = None) -> PriceResult:
    why = _may_touch(actor, stall_id, why)
    _stall(session, stall_id)
    item = get_item(session, plu, lock=True)
    if not item.active:
        raise refusal(Conflict, f"商品 {plu} 已停用，不能定价",
                      f"item {plu} is deactivated; it takes no prices")
    if item.cap_fen is not None and unit_price_fen > item.cap_fen:
        raise refusal(Conflict, f"单价 {_per_unit(unit_price_fen, item)} 高于市场限价 "
                      f"{_per_unit(item.cap_fen, item)}",
                      f"unit price {_per_unit(unit_price_fen, item)} is above the market's cap "
                      f"{_per_unit(item.cap_fen, item)}")
    price = session.get(db.StallPrice, (stall_id, plu))
    if price is not None and price.unit_price_fen == unit_price_fen:
        return PriceResult(stall_id, plu, unit_price_fen, changed=False)
    now = _now()
    _record(session, actor, item, kind="price", stall_id=stall_id,
            old=price.unit_price_fen if price else None, new=unit_price_fen, why=why, at=now)
    if price is None:
        session.add(db.StallPrice(stall_id=stall_id, plu=plu, unit_price_fen=unit_price_fen,
                                  updated_at=now))
    else:
        price.unit_price_fen, price.updated_at = unit_price_fen, now
    feedversion.bump(session)
    high = _check_high(session, item, stall_id, unit_price_fen)
    return PriceResult(stall_id, plu, unit_price_fen, changed=True, price_high=high)


def remove_price(session: Session, actor: Actor, stall_id: str, plu: str,
                 why: str | None = None) -> PriceResult:
    """The stall no longer prices the item (recorded, new_fen null); nothing if it had no price."""
    why = _may_touch(actor, stall_id, why)
    _stall(session, stall_id)
    item = get_item(session, plu, lock=True)
    price = session.get(db.StallPrice, (stall_id, plu))
    if price is None:
        return PriceResult(stall_id, plu, None, changed=False)
    _record(session, actor, item, kind="price", stall_id=stall_id, old=price.unit_price_fen,
            new=None, why=why, at=_now())
    session.delete(price)
    feedversion.bump(session)
    return PriceResult(stall_id, plu, None, changed=True)


def _check_high(session: Session, item: db.Item, stall_id: str, fen: int) -> bool:
    """Alert when ``fen`` is over 1.5x the median of the other stalls' prices of the item
    (the stall's own price left out: with few stalls it would drag the median up to itself)."""
    others = session.execute(select(db.StallPrice.unit_price_fen).where(
        db.StallPrice.plu == item.plu, db.StallPrice.stall_id != stall_id)).scalars().all()
    if not others:
        return False
    median = Fraction(statistics.median(others))  # a half 分 for an even count: exact
    if fen <= HIGH_FACTOR * median:
        return False
    shown = _per_unit(round(median), item)
    raise_alert(session, "price_high", key=f"{stall_id}:{item.plu}:{fen}", stall_id=stall_id,
                plu=item.plu,
                detail=f"摊位 {stall_id} 的 {item.name} 单价 {_per_unit(fen, item)} 超过其他摊位中位价 "
                       f"{shown} 的 1.5 倍 — stall {stall_id} prices {item.name_en} at "
                       f"{_per_unit(fen, item)}, over 1.5x the median {shown} of the other stalls "
                       f"({len(others)})")
    return True
