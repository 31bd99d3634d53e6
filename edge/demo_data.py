"""The demo market: three stalls and their items (prices in 分, names as the model's labels).

The stalls' configs seed their ``[[catalogue]]`` from these items, and the demo enters the
same items and prices in the market server (``edge.demo_seed``), so the feed the stalls
follow agrees with their seeds; the market adds what only it knows: caps, yesterday's
prices, today's specials and rapid tests.
"""

from __future__ import annotations

from typing import Any

# (plu, 中文名, English, unit price 分, unit, category, model label)
_ITEMS: dict[str, list[tuple[str, str, str, int, str, str, str | None]]] = {
    "S01": [
        ("1001", "金冠苹果", "Golden Delicious apple", 1190, "kg", "水果", "Golden-Delicious"),
        ("1002", "青苹果", "Granny Smith apple", 1390, "kg", "水果", "Granny-Smith"),
        ("1003", "香蕉", "Banana", 690, "kg", "水果", "Banana"),
        ("1004", "猕猴桃", "Kiwi", 1580, "kg", "水果", "Kiwi"),
        ("1005", "橙子", "Orange", 980, "kg", "水果", "Orange"),
        ("1006", "芒果", "Mango", 1280, "kg", "水果", "Mango"),
        ("1007", "柠檬", "Lemon", 300, "piece", "水果", None),
        ("1008", "西瓜", "Watermelon", 199, "500g", "水果", "Watermelon"),
        ("1009", "砂糖橘", "Satsuma", 560, "500g", "水果", "Satsumas"),
    ],
    "S02": [
        ("2001", "西红柿", "Tomato", 300, "500g", "蔬菜", "Regular-Tomato"),
        ("2002", "黄瓜", "Cucumber", 260, "500g", "蔬菜", "Cucumber"),
        ("2003", "胡萝卜", "Carrot", 380, "kg", "蔬菜", "Carrots"),
        ("2004", "茄子", "Aubergine", 450, "500g", "蔬菜", "Aubergine"),
        ("2005", "西葫芦", "Zucchini", 320, "500g", "蔬菜", "Zucchini"),
        ("2006", "青椒", "Green pepper", 500, "500g", "蔬菜", "Green-Bell-Pepper"),
        ("2007", "洋葱", "Onion", 360, "kg", "蔬菜", "Yellow-Onion"),
        ("2008", "大蒜", "Garlic", 1200, "kg", "蔬菜", "Garlic"),
        ("2009", "生姜", "Ginger", 1600, "kg", "蔬菜", "Ginger"),
        ("2010", "土豆", "Potato", 280, "kg", "蔬菜", "Solid-Potato"),
    ],
    "S03": [
        ("3001", "红薯", "Sweet potato", 450, "kg", "蔬菜", "Sweet-Potato"),
        ("3002", "蘑菇", "Mushroom", 1200, "kg", "菌菇", "Brown-Cap-Mushroom"),
        ("3003", "甜菜根", "Beetroot", 800, "kg", "蔬菜", "Red-Beet"),
        ("3004", "芦笋", "Asparagus", 1800, "500g", "蔬菜", "Asparagus"),
        ("3005", "桃子", "Peach", 1500, "kg", "水果", "Peach"),
        ("3006", "石榴", "Pomegranate", 900, "piece", "水果", None),
        ("3007", "卷心菜", "Cabbage", 240, "kg", "蔬菜", "Cabbage"),
        ("3008", "大葱", "Leek", 600, "kg", "蔬菜", "Leek"),
    ],
}

_ORIGIN = {"1": "山东烟台", "2": "上海崇明", "3": "云南昆明"}

STALLS: list[tuple[str, str, str]] = [
    ("S01", "鲜果摊 王记", "王师傅"),
    ("S02", "时令蔬菜 李家", "李阿姨"),
    ("S03", "菌菇杂蔬 张氏", "张老板"),
]


def batch_code(plu: str, day: str) -> str:
    """The batch a stall sells ``plu`` from on ``day`` (YYYYMMDD), as its config and the tests name it."""
    return f"B{day}-{plu[-2:]}"


def catalogue(stall_id: str, day: str) -> list[dict[str, Any]]:
    """The stall's items as its config writes them (the Sale contract's names, as in the README)."""
    return [
        {"plu": plu, "name": zh, "name_en": en, "unit_price_fen": price, "price_unit": unit,
         "label": label, "batch_code": batch_code(plu, day), "origin": _ORIGIN.get(plu[0], "上海"),
         "inspection": "passed"}
        for plu, zh, en, price, unit, _category, label in _ITEMS[stall_id]
    ]


def market_items() -> list[dict[str, Any]]:
    """The market catalogue (``POST /api/v1/items`` bodies): every stall's items, with their caps."""
    items = []
    for stall_id, _name, _vendor in STALLS:
        for plu, zh, en, _price, unit, category, label in _ITEMS[stall_id]:
            item: dict[str, Any] = {"plu": plu, "name": zh, "name_en": en, "category": category,
                                    "price_unit": unit, "origin": _ORIGIN.get(plu[0], "上海"),
                                    "label": label}
            if plu in CAPS:
                item["cap_fen"], item["why"] = CAPS[plu], CAP_WHY
            items.append({k: v for k, v in item.items() if v is not None})
    return items


def stall_prices() -> list[tuple[str, str, int]]:
    """Each stall's price of each of its items today, as its config seeds it: (stall, plu, 分)."""
    return [(stall_id, plu, price) for stall_id, _name, _vendor in STALLS
            for plu, _zh, _en, price, *_rest in _ITEMS[stall_id]]


#: The market's price caps (平价菜: staples the market keeps cheap), 分 per the item's unit.
CAPS = {"2001": 400, "2002": 360, "2010": 400, "3007": 320}
CAP_WHY = "平价菜限价（区商务委）"

#: Prices the stalls held yesterday, changed to today's (their seeds) at the opening, so
#: the price history has a story: (stall, plu, yesterday's 分, why today's differs).
YESTERDAY: list[tuple[str, str, int, str]] = [
    ("S01", "1006", 1180, "芒果到货价上涨"),
    ("S01", "1009", 620, "砂糖橘大量上市，降价"),
    ("S02", "2001", 340, "崇明基地番茄上市，降价"),
    ("S02", "2008", 1100, "蒜价上行"),
    ("S03", "3002", 1350, "本地蘑菇到货，降价"),
]

#: Today's specials (特价): (stall, plu, special 分, starts and ends in minutes from the
#: demo's start, title). The last starts later, so the big screen lists one to come.
SPECIALS: list[tuple[str, str, int, int, int, str | None]] = [
    ("S01", "1003", 590, -60, 240, "晚市特价"),
    ("S03", "3007", 199, -30, 180, "平价菜"),
    ("S02", "2005", 260, 90, 300, "晚市特价"),
]

#: Today's rapid tests (农残快检) of the stalls' batches: (stall, plu, inhibition %);
#: 50 % or more fails, so S02's aubergine batch is blocked at its stall.
RAPID_TESTS: list[tuple[str, str, float]] = [
    ("S01", "1001", 8.2), ("S01", "1004", 12.4), ("S02", "2001", 5.3), ("S02", "2004", 62.5),
    ("S02", "2006", 17.8), ("S03", "3002", 21.0), ("S03", "3004", 9.9),
]
RAPID_TESTER = "市场检测室 刘"
