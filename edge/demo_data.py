"""The demo market: three stalls and their items (prices in 分, names as the model's labels)."""

from __future__ import annotations

from typing import Any

# (plu, 中文名, English, unit price 分, unit, model label)
_ITEMS: dict[str, list[tuple[str, str, str, int, str, str | None]]] = {
    "S01": [
        ("1001", "金冠苹果", "Golden Delicious apple", 1190, "kg", "Golden-Delicious"),
        ("1002", "青苹果", "Granny Smith apple", 1390, "kg", "Granny-Smith"),
        ("1003", "香蕉", "Banana", 690, "kg", "Banana"),
        ("1004", "猕猴桃", "Kiwi", 1580, "kg", "Kiwi"),
        ("1005", "橙子", "Orange", 980, "kg", "Orange"),
        ("1006", "芒果", "Mango", 1280, "kg", "Mango"),
        ("1007", "柠檬", "Lemon", 300, "piece", None),
        ("1008", "西瓜", "Watermelon", 199, "500g", "Watermelon"),
        ("1009", "砂糖橘", "Satsuma", 560, "500g", "Satsumas"),
    ],
    "S02": [
        ("2001", "西红柿", "Tomato", 300, "500g", "Regular-Tomato"),
        ("2002", "黄瓜", "Cucumber", 260, "500g", "Cucumber"),
        ("2003", "胡萝卜", "Carrot", 380, "kg", "Carrots"),
        ("2004", "茄子", "Aubergine", 450, "500g", "Aubergine"),
        ("2005", "西葫芦", "Zucchini", 320, "500g", "Zucchini"),
        ("2006", "青椒", "Green pepper", 500, "500g", "Green-Bell-Pepper"),
        ("2007", "洋葱", "Onion", 360, "kg", "Yellow-Onion"),
        ("2008", "大蒜", "Garlic", 1200, "kg", "Garlic"),
        ("2009", "生姜", "Ginger", 1600, "kg", "Ginger"),
        ("2010", "土豆", "Potato", 280, "kg", "Solid-Potato"),
    ],
    "S03": [
        ("3001", "红薯", "Sweet potato", 450, "kg", "Sweet-Potato"),
        ("3002", "蘑菇", "Mushroom", 1200, "kg", "Brown-Cap-Mushroom"),
        ("3003", "甜菜根", "Beetroot", 800, "kg", "Red-Beet"),
        ("3004", "芦笋", "Asparagus", 1800, "500g", "Asparagus"),
        ("3005", "桃子", "Peach", 1500, "kg", "Peach"),
        ("3006", "石榴", "Pomegranate", 900, "piece", None),
        ("3007", "卷心菜", "Cabbage", 240, "kg", "Cabbage"),
        ("3008", "大葱", "Leek", 600, "kg", "Leek"),
    ],
}

_ORIGIN = {"1": "山东烟台", "2": "上海崇明", "3": "云南昆明"}

STALLS: list[tuple[str, str, str]] = [
    ("S01", "鲜果摊 王记", "王师傅"),
    ("S02", "时令蔬菜 李家", "李阿姨"),
    ("S03", "菌菇杂蔬 张氏", "张老板"),
]


def catalogue(stall_id: str, day: str) -> list[dict[str, Any]]:
    """The stall's items as its config writes them (the Sale contract's names, as in the README)."""
    return [
        {"plu": plu, "name": zh, "name_en": en, "unit_price_fen": price, "price_unit": unit,
         "label": label, "batch_code": f"B{day}-{plu[-2:]}", "origin": _ORIGIN.get(plu[0], "上海"),
         "inspection": "passed"}
        for plu, zh, en, price, unit, label in _ITEMS[stall_id]
    ]
