"""edge.sale: what a sale may carry, checked wherever it is read (stall journal, server)."""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge import EdgeError
from edge.integrity import GENESIS_HASH, sign_sale
from edge.journal import Journal
from edge.sale import MAX_LINE_EXTRA_BYTES, MAX_SALE_EXTRA_BYTES, Sale, SaleContext
from tests.edge.receipt_samples import KEY, sale_dict


def _sale(**changes: Any) -> Sale:
    return Sale.model_validate(sale_dict(**changes))


@pytest.mark.parametrize("sold_at", [
    "2000-01-01T00:00:00Z",
    "2000-01-01T08:00:00+08:00",
    "2099-12-31T23:59:59Z",
    "2100-01-01T07:59:59+08:00",        # 2099-12-31T23:59:59 UTC
    "2099-12-31T11:59:59-12:00",
    "2026-11-28T08:15:02+14:00",
])
def test_times_every_part_can_handle(sold_at: str) -> None:
    assert _sale(sold_at=sold_at).sold_at.isoformat().startswith(sold_at[:19])


@pytest.mark.parametrize(("sold_at", "message"), [
    ("9999-12-31T23:59:59-12:00", "sold_at 9999-12-31T23:59:59-12:00 is outside the years "
                                  r"2000..2099 \(UTC\): is the stall's clock set\?"),
    ("0001-01-01T00:00:00+14:00", "sold_at 0001-01-01T00:00:00[+]14:00 is outside the years"),
    ("1999-12-31T23:59:59Z", "outside the years"),
    ("2000-01-01T07:59:59+08:00", "outside the years"),
    ("2100-01-01T00:00:00Z", "outside the years"),
    ("2026-11-28T08:15:02+15:00", "UTC offset 15:00:00, outside -12:00..[+]14:00"),
    ("2026-11-28T08:15:02-13:00", "UTC offset -1 day, 11:00:00, outside"),
    ("2026-11-28T08:15:02", "sold_at needs a UTC offset"),
    (1764288902, "sold_at must be an ISO 8601 time with its UTC offset"),
    (1764288902.5, "sold_at must be an ISO 8601 time"),
])
def test_times_no_part_can_handle_are_refused(sold_at: object, message: str) -> None:
    """Issue 16 item 11: year 9999 at -12:00 overflowed the server's conversions (a 500)."""
    with pytest.raises(ValidationError, match=message):
        _sale(sold_at=sold_at)


@pytest.mark.parametrize("where", ["weight_g", "unit_price_fen", "amount_fen"])
@pytest.mark.parametrize("retype", [str, float, bool])
def test_line_integers_are_json_numbers_only(where: str, retype: type) -> None:
    """Issue 16 item 8: "weight_g": "512" was coerced to 512."""
    data = sale_dict()
    data["lines"][0][where] = retype(data["lines"][0][where])
    with pytest.raises(ValidationError, match=f"lines.0.{where}\n  Input should be a valid integer"):
        Sale.model_validate(data)
    # The journal and the server read JSON: a JSON 512.0 or "512" is refused there too.
    with pytest.raises(ValidationError, match=f"lines.0.{where}\n  Input should be a valid integer"):
        Sale.model_validate_json(json.dumps(data))


@pytest.mark.parametrize("retype", [str, float])
def test_sale_integers_and_quantity_are_json_numbers_only(retype: type) -> None:
    for where in ("receipt_no", "total_fen"):
        data = sale_dict()
        data[where] = retype(data[where])
        with pytest.raises(ValidationError, match=f"{where}\n  Input should be a valid integer"):
            Sale.model_validate_json(json.dumps(data))
    data = sale_dict()
    data["lines"][1]["quantity"] = retype(data["lines"][1]["quantity"])
    with pytest.raises(ValidationError, match="lines.1.quantity\n  Input should be a valid integer"):
        Sale.model_validate_json(json.dumps(data))


def test_the_extra_fields_stalls_add_are_kept() -> None:
    sale = _sale(vendor="王师傅", rounding="half-up",
                 lines=[{**line, "name_en": "Tomato", "origin": "山东寿光"}
                        for line in sale_dict()["lines"]])
    assert sale.to_json()["vendor"] == "王师傅"
    assert sale.lines[0].model_extra == {"name_en": "Tomato", "origin": "山东寿光"}
    # Up to the bounds: 16 fields, 3 levels, the byte budget.
    _sale(**{f"f{i}": i for i in range(16)})
    _sale(info={"a": {"b": [1, 2]}})
    _sale(note="字" * ((MAX_SALE_EXTRA_BYTES - len('{"note":""}')) // 3))


@pytest.mark.parametrize(("extra", "message"), [
    ({"notes": "x" * 50_000_000}, "extra fields take more than 4096 bytes of JSON"),
    ({"note": "字" * 1366}, "extra fields take 4109 bytes of JSON, at most 4096"),
    ({"blob": list(range(5000))}, "extra fields take more than 4096 bytes"),
    ({f"f{i}": i for i in range(17)}, "17 extra fields, at most 16"),
    ({"a": {"b": {"c": {"d": [1]}}}}, "extra fields nest deeper than 3 levels"),
    ({"a": [[[[]]]]}, "nest deeper than 3 levels"),
    ({"x" * 33: 1}, "extra field name 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' must be a letter"),
    ({"名字": "x"}, "extra field name '名字' must be"),
    ({"v": math.inf}, r"extra fields must be plain JSON \(no NaN or Infinity\)"),
    ({"v": math.nan}, "must be plain JSON"),
])
def test_extra_fields_are_bounded(extra: dict[str, Any], message: str) -> None:
    """Issue 16 item 11: a signed sale with a 50 MB extra field was stored and served back."""
    started = time.perf_counter()
    with pytest.raises(ValidationError, match=message):
        _sale(**extra)
    line = {**sale_dict()["lines"][0], **extra}
    with pytest.raises(ValidationError, match="lines.0\n  Value error, "):
        _sale(lines=[line])
    assert time.perf_counter() - started < 5  # a 50 MB field is refused before it is serialised


def test_a_line_has_a_smaller_extra_budget() -> None:
    line = {**sale_dict()["lines"][0], "origin": "x" * MAX_LINE_EXTRA_BYTES}
    with pytest.raises(ValidationError, match="lines.0\n  Value error, extra fields take 1037 "
                                              "bytes of JSON, at most 1024"):
        _sale(lines=[line])


@settings(max_examples=400, deadline=None)
@given(extra=st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,31}", fullmatch=True),
                             st.text(alphabet=st.characters(max_codepoint=0x7F)) | st.text(),
                             max_size=16),
       budget=st.integers(min_value=2, max_value=1100))
def test_flat_text_extras_are_judged_by_their_exact_json_size(extra: dict[str, str], budget: int) -> None:
    """The shortcut for flat ASCII text (every uploaded line's name_en) says what writing the
    JSON out says: refused exactly when the JSON is over the budget (or cannot be UTF-8)."""
    from edge.sale import extra_problem

    try:
        size: int | None = len(json.dumps(extra, ensure_ascii=False, separators=(",", ":")).encode())
    except UnicodeEncodeError:  # a lone surrogate, which JSON text can carry as \ud800
        size = None
    if not extra:
        assert extra_problem(extra, budget) is None
    elif size is None:
        with pytest.raises(UnicodeEncodeError):
            extra_problem(extra, budget)
    else:
        assert (extra_problem(extra, budget) is None) == (size <= budget)


def test_the_stall_journals_only_sales_the_server_can_take(tmp_path: Path) -> None:
    """A stall whose clock is absurd refuses to sell, with the reason, instead of journaling
    a sale that no upload could ever place; its next sale takes the same receipt number."""
    journal = Journal(tmp_path / "journal.sqlite3")
    here = SaleContext(region="310106", market=1, stall_id="S01")

    def build_at(sold_at: str, market: int = 1):  # type: ignore[no-untyped-def]
        def build(receipt_no: int, prev_hash: str) -> Sale:  # as edge.session.Session.checkout
            from edge.tracecode import make_trace_code

            doc = sale_dict(receipt_no=receipt_no, prev_hash=prev_hash, sold_at=sold_at,
                            sale_id=str(uuid.uuid4()),
                            trace_code=make_trace_code("310106", market, 1, receipt_no))
            doc["signature"] = sign_sale(doc, KEY)
            return Sale.model_validate(doc, context=here)
        return build

    with pytest.raises(EdgeError, match="sold_at 2150-01-01T08:00:00[+]08:00 is outside the years "
                                        r"2000..2099 \(UTC\): is the stall's clock set\?"):
        journal.append(build_at("2150-01-01T08:00:00+08:00"))
    with pytest.raises(ValidationError, match="names market 2 of region 310106, not this market"):
        journal.append(build_at("2026-11-28T08:15:02+08:00", market=2))
    assert journal.all_sales() == [] and journal.counts()["pending"] == 0
    sale = journal.append(build_at("2026-11-28T08:15:02+08:00"))
    assert sale.receipt_no == 1 and sale.prev_hash == GENESIS_HASH
    journal.close()
