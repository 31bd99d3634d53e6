"""edge.tracecode: layout, Luhn digit, validation wherever a code is read."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge import TraceCodeError
from edge.sale import Sale, SaleContext
from edge.tracecode import (
    TraceCode,
    check_market,
    check_sale_trace,
    luhn_check_digit,
    make_trace_code,
    parse_trace_code,
    stall_id_aliases,
    stall_number,
    trace_url,
)


def test_contract_example() -> None:
    assert make_trace_code("310106", 1, 1, 42) == "31010600100100000425"
    assert parse_trace_code("31010600100100000425") == TraceCode("310106", 1, 1, 42)
    assert TraceCode("310106", 1, 1, 42).code == "31010600100100000425"


def test_luhn_known_values() -> None:
    # Textbook Luhn examples: 7992739871 -> 3, and a Visa test number.
    assert luhn_check_digit("7992739871") == 3
    assert luhn_check_digit("411111111111111") == 1


@settings(max_examples=200, deadline=None)
@given(
    region=st.sampled_from(["110101", "310106", "440305", "820000"]),
    market=st.integers(1, 999), stall=st.integers(1, 999), receipt=st.integers(1, 9_999_999),
    position=st.integers(0, 19), delta=st.integers(1, 9),
)
def test_round_trip_and_every_single_digit_error_is_caught(
    region: str, market: int, stall: int, receipt: int, position: int, delta: int
) -> None:
    code = make_trace_code(region, market, stall, receipt)
    assert len(code) == 20
    assert parse_trace_code(code) == TraceCode(region, market, stall, receipt)
    broken = code[:position] + str((int(code[position]) + delta) % 10) + code[position + 1:]
    with pytest.raises(TraceCodeError):
        parse_trace_code(broken)


def test_adjacent_transposition_is_caught() -> None:
    code = "31010600100100000425"
    swapped = code[:17] + code[18] + code[17] + code[19:]  # "...0042" -> "...0024"
    with pytest.raises(TraceCodeError, match="fails its check digit"):
        parse_trace_code(swapped)


def _with_check(payload: str) -> str:
    return payload + str(luhn_check_digit(payload))


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("3101060010010000042", "exactly 20 digits"),
        ("310106001001000004250", "exactly 20 digits"),
        ("3101060010010000042X", "exactly 20 digits"),
        ("３1010600100100000425", "exactly 20 digits"),   # full-width digit
        (" 31010600100100000425", "exactly 20 digits"),
        ("31010600100100000426", r"fails its check digit \(expected 5\)"),
        (_with_check("9901060010010000042"), "province"),
        (_with_check("3101060000010000001"), "zero market"),
        (42, "must be a string"),
    ],
)
def test_malformed_codes_are_refused(code: object, message: str) -> None:
    with pytest.raises(TraceCodeError, match=message):
        parse_trace_code(code)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("31010", 1, 1, 1), "6 digits"),
        (("310106", 0, 1, 1), r"market must be an integer 1\.\.999, got 0"),
        (("310106", 1, 1000, 1), "stall must be"),
        (("310106", 1, 1, 10_000_000), "receipt_no must be"),
        (("310106", 1, True, 1), "stall must be"),
    ],
)
def test_make_refuses_fields_that_do_not_fit(args: tuple, message: str) -> None:
    with pytest.raises(TraceCodeError, match=message):
        make_trace_code(*args)


def test_stall_number() -> None:
    assert stall_number("S01") == 1
    assert stall_number("S123") == 123
    assert stall_number("s007") == 7
    for bad in ["S0", "S1000", "A01", "S01x", "", "01"]:
        with pytest.raises(TraceCodeError, match="cannot be put in a trace code"):
            stall_number(bad)


def _raw_sale(stall_id: str, receipt_no: int, code: str) -> dict[str, object]:
    return {
        "sale_id": str(uuid.UUID(int=7)), "stall_id": stall_id, "receipt_no": receipt_no,
        "sold_at": "2026-11-28T08:15:02+08:00", "trace_code": code,
        "lines": [{"plu": "1", "name": "葱", "quantity": 1, "unit_price_fen": 100,
                   "price_unit": "piece", "amount_fen": 100}],
        "total_fen": 100, "prev_hash": "0" * 64,
    }


def _sale(stall_id: str, receipt_no: int, code: str) -> Sale:
    return Sale.model_validate(_raw_sale(stall_id, receipt_no, code))


def test_check_sale_trace() -> None:
    assert check_sale_trace(_sale("S01", 42, "31010600100100000425")).receipt_no == 42
    # A Sale refuses a bad check digit, another stall's or receipt's code itself;
    # check_sale_trace catches one built unchecked.
    with pytest.raises(ValidationError, match=r"31010600100100000421 fails its check digit"):
        _sale("S01", 42, "31010600100100000421")
    good = _sale("S01", 42, "31010600100100000425")
    for changes, message in [
        ({"trace_code": "31010600100100000421"}, "fails its check digit"),
        ({"stall_id": "S02"}, "names stall 1, the sale is S02"),
        ({"receipt_no": 43}, "names receipt 42, the sale is receipt 43"),
    ]:
        with pytest.raises(TraceCodeError, match=message):
            check_sale_trace(Sale.model_construct(**{**dict(good), **changes}))


def test_a_sale_carries_its_own_stalls_trace_code() -> None:
    """Issue 16 item 9: S01's sale with S02's trace code was valid and took S02's code."""
    s02_code = make_trace_code("310106", 1, 2, 42)
    with pytest.raises(ValidationError, match=f"trace code {s02_code} names stall 2, the sale is S01"):
        _sale("S01", 42, s02_code)
    with pytest.raises(ValidationError, match="names receipt 43, the sale is receipt 42"):
        _sale("S01", 42, make_trace_code("310106", 1, 1, 43))
    # S02's own receipt with that code is a sale; a stall id that has no number is not.
    assert _sale("S02", 42, s02_code).trace_code == s02_code
    with pytest.raises(ValidationError, match="stall id 'A02' cannot be put in a trace code"):
        _sale("A02", 42, s02_code)


def test_the_receiver_says_which_market_and_stall_it_expects() -> None:
    here = SaleContext(region="310106", market=1, stall_id="S01")
    code = make_trace_code("310106", 1, 1, 42)
    assert Sale.model_validate(_raw_sale("S01", 42, code), context=here).trace_code == code
    other_market = make_trace_code("310106", 2, 1, 42)
    other_region = make_trace_code("320102", 1, 1, 42)
    for raw, context, message in [
        (_raw_sale("S01", 42, other_market), here,
         f"trace code {other_market} names market 2 of region 310106, not this market "
         r"\(1 of region 310106\)"),
        (_raw_sale("S01", 42, other_region), here, "names market 1 of region 320102"),
        (_raw_sale("S02", 42, make_trace_code("310106", 1, 2, 42)), here,
         "sale belongs to stall S02, not to S01 that sends it"),
        (_raw_sale("S01", 42, code), SaleContext(region="310106", market=3),
         r"not this market \(3 of region 310106\)"),
    ]:
        with pytest.raises(ValidationError, match=message):
            Sale.model_validate(raw, context=context)
    # The JSON reader takes the same context (the stall's journal reads its sales back so).
    text = json.dumps(_raw_sale("S01", 42, other_market))
    with pytest.raises(ValidationError, match="names market 2"):
        Sale.model_validate_json(text, context=here)


def test_stall_id_aliases() -> None:
    assert stall_id_aliases(1) == ["S1", "S01", "S001", "s1", "s01", "s001"]
    assert stall_id_aliases(42) == ["S42", "S042", "s42", "s042"]
    assert stall_id_aliases(999) == ["S999", "s999"]
    assert all(stall_number(alias) == 7 for alias in stall_id_aliases(7))
    for bad in (0, 1000, True):
        with pytest.raises(TraceCodeError, match="stall must be"):
            stall_id_aliases(bad)


def test_check_market() -> None:
    check_market("310106", 1)
    check_market("650102", 999)
    for region, market, message in [("31010", 1, "6 digits"), ("990106", 1, "province"),
                                    ("310106", 0, "market must be"), ("310106", 1000, "market must be")]:
        with pytest.raises(TraceCodeError, match=message):
            check_market(region, market)


def test_trace_url() -> None:
    assert (trace_url("http://127.0.0.1:8000/", "31010600100100000425", "ab-_c==")
            == "http://127.0.0.1:8000/t/31010600100100000425?s=ab-_c==")
    assert trace_url("https://m.example.cn", "31010600100100000425") == (
        "https://m.example.cn/t/31010600100100000425")
    with pytest.raises(TraceCodeError, match="fails its check digit"):
        trace_url("http://x", "31010600100100000426", "")
    with pytest.raises(TraceCodeError, match="urlsafe base64"):
        trace_url("http://x", "31010600100100000425", "a&b")
    with pytest.raises(TraceCodeError, match="base URL"):
        trace_url("ftp://x", "31010600100100000425", "")
