"""Fuzzing what a stall reads from the network besides scale frames: the market's feed
(``edge.feed.parse_feed`` then ``build_catalogue``, as ``FeedClient`` applies it).  Whatever
the bytes, the feed is applied whole or refused with one ``FeedRefused`` that says why, and
what a refused feed would have sold is never sold."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.feed import FeedRefused, build_catalogue, parse_feed

GOOD: dict[str, Any] = {
    "format": 1, "version": 7, "stall_id": "S02", "server_time": "2026-12-02T08:00:00+08:00",
    "timezone": "Asia/Shanghai",
    "items": [{"plu": "2001", "name": "西红柿", "name_en": "Tomato", "category": "蔬菜",
               "price_unit": "500g", "cap_fen": 500, "market_median_fen": 300, "label": "Tomato"},
              {"plu": "2099", "name": "玉米", "name_en": "Corn", "category": "粮油",
               "price_unit": "piece"}],
    "prices": [{"plu": "2001", "unit_price_fen": 320}, {"plu": "2099", "unit_price_fen": 150}],
    "specials": [{"id": 1, "plu": "2001", "special_price_fen": 280, "title": "特价",
                  "starts_at": "2026-12-02T07:00:00+08:00", "ends_at": "2026-12-02T12:00:00+08:00"}],
    "blocked": [{"batch_code": "B20261202-01", "plu": "2099", "reason": "农残快检不合格 / failed",
                 "method": "酶抑制率法", "inhibition_permille": 620, "tester": "张三",
                 "tested_at": "2026-12-02T07:30:00+08:00", "inspection_id": 3}],
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from(["2001", "S02", "kg", "斤", "2026-12-02T09:00:00", "\u202e", "9" * 400]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children,
                                                                       max_size=3),
    max_leaves=10,
)


def _paths(doc: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in ``doc`` a value can be put: each key and list index, nested."""
    out = [at]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*at, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*at, i))
    return out


PATHS = _paths(GOOD)[1:]


def _apply(body: bytes) -> None:
    try:
        doc = parse_feed(body, "S02")
        catalogue, _labels = build_catalogue(doc, [])
    except FeedRefused as exc:
        assert str(exc), "a refusal says why"
        return
    for price in doc.prices:  # applied: exactly the feed's prices
        item = catalogue.get(price.plu)
        assert item.unit_price_fen == price.unit_price_fen


def test_the_seed_feed_applies() -> None:
    doc = parse_feed(json.dumps(GOOD).encode(), "S02")
    catalogue, labels = build_catalogue(doc, [])
    assert catalogue.get("2001").unit_price_fen == 320 and labels == {"Tomato": "2001"}


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), json_values), min_size=1, max_size=4))
def test_a_feed_with_any_field_replaced(edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    doc = copy.deepcopy(GOOD)
    for path, value in edits:
        node = doc
        try:
            for step in path[:-1]:
                node = node[step]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced the container
    _apply(json.dumps(doc, ensure_ascii=False).encode())


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600), cut=st.integers(0, 2000))
def test_any_bytes_and_a_feed_cut_short(data: bytes, cut: int) -> None:
    _apply(data)
    _apply(json.dumps(GOOD).encode()[:cut] + data[:8])
