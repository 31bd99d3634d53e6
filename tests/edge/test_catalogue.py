"""edge.catalogue: items, units, promotions, inspection, caps, median warnings."""

from __future__ import annotations

import datetime as dt
import json
import pathlib

import pytest

from edge import CatalogueError, PricingError
from edge.catalogue import Catalogue, Plu

CST = dt.timezone(dt.timedelta(hours=8))
TOMATO = {
    "code": "1001", "name_zh": "西红柿", "name_en": "Tomato", "price_unit": "500g",
    "unit_price_fen": 300, "origin": "山东寿光", "batch_code": "B20261127-07",
    "inspection": "passed", "tare_presets_g": [15, 40], "price_cap_fen": 800,
    "market_median_fen": 280,
    "promotion": {"unit_price_fen": 250, "starts_at": "2026-11-28T17:00:00+08:00",
                  "ends_at": "2026-11-28T19:00:00+08:00"},
}
EGGS = {"code": "2001", "name_zh": "鸡蛋", "name_en": "Egg", "price_unit": "piece",
        "unit_price_fen": 80}


def test_loads_and_looks_up(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps([TOMATO, EGGS], ensure_ascii=False), encoding="utf-8")
    catalogue = Catalogue.load(path)
    assert len(catalogue) == 2
    tomato = catalogue.get("1001")
    assert (tomato.name_zh, tomato.name_en, tomato.origin, tomato.tare_presets_g) == (
        "西红柿", "Tomato", "山东寿光", (15, 40))
    with pytest.raises(CatalogueError, match="^unknown PLU '9999'$"):
        catalogue.get("9999")


def test_promotion_window() -> None:
    tomato = Plu.model_validate(TOMATO)
    assert tomato.price_at(dt.datetime(2026, 11, 28, 16, 59, 59, tzinfo=CST)) == 300
    assert tomato.price_at(dt.datetime(2026, 11, 28, 17, 0, tzinfo=CST)) == 250
    assert tomato.price_at(dt.datetime(2026, 11, 28, 10, 59, tzinfo=dt.UTC)) == 250
    assert tomato.price_at(dt.datetime(2026, 11, 28, 19, 0, tzinfo=CST)) == 300  # end excluded


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"price_unit": "斤"}, "never per 斤 or 两"),
        ({"price_unit": "lb"}, "Input should be 'kg', '500g' or 'piece'"),
        ({"unit_price_fen": 0}, "unit_price_fen: Input should be greater than 0"),
        ({"unit_price_fen": "300"}, "unit_price_fen: Input should be a valid integer"),
        ({"unit_price_fen": 300.0}, "unit_price_fen: Input should be a valid integer"),
        ({"unit_price_fen": 900}, "above the market's cap ￥8.00"),
        ({"tare_presets_g": [0]}, "tare presets are positive grams"),
        ({"inspection": "ok"}, "inspection: Input should be"),
        ({"promotion": {**TOMATO["promotion"], "unit_price_fen": 300}},
         "promotion price must be below"),
        ({"promotion": {**TOMATO["promotion"], "ends_at": "2026-11-28T16:00:00+08:00"}},
         "must end after it starts"),
        ({"promotion": {**TOMATO["promotion"], "starts_at": "2026-11-28T16:00:00"}},
         "need a UTC offset"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_invalid_items_are_refused(change: dict, message: str) -> None:
    with pytest.raises(CatalogueError, match=f"^catalogue item 1: .*{message}"):
        Catalogue.from_list([{**TOMATO, **change}])


def test_duplicates_and_bad_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(CatalogueError, match="PLU 1001 appears twice"):
        Catalogue.from_list([TOMATO, TOMATO])
    path = tmp_path / "c.json"
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(CatalogueError, match="must be a JSON list"):
        Catalogue.load(path)
    with pytest.raises(CatalogueError, match="cannot be read"):
        Catalogue.load(tmp_path / "missing.json")


def test_failed_inspection_stops_the_sale() -> None:
    Plu.model_validate(TOMATO).check_sellable()
    failed = Plu.model_validate({**TOMATO, "inspection": "failed"})
    with pytest.raises(CatalogueError, match="batch B20261127-07 failed its rapid test"):
        failed.check_sellable()


def test_set_price_warns_against_the_median_and_refuses_nonsense() -> None:
    plain = {key: value for key, value in TOMATO.items() if key != "promotion"}
    catalogue = Catalogue.from_list([plain, EGGS])
    assert catalogue.set_price("1001", 320) is None
    assert catalogue.get("1001").unit_price_fen == 320
    warning = catalogue.set_price("1001", 3)  # 3 分 typed for 300
    assert warning is not None
    assert warning.message_en == ("unit price ￥0.03/500g is far from the market median "
                                  "￥2.80/500g; please confirm")
    with pytest.raises(PricingError, match="got 0"):
        catalogue.set_price("1001", 0)
    with pytest.raises(PricingError, match="above the market's cap"):
        catalogue.set_price("1001", 801)
    assert catalogue.get("1001").unit_price_fen == 3  # refused changes changed nothing
    assert Plu.model_validate(TOMATO).price_warning() is None
    promoted = Catalogue.from_list([TOMATO])
    with pytest.raises(PricingError, match="promotion price must be below the unit price"):
        promoted.set_price("1001", 200)
