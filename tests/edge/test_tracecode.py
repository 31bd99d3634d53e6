"""edge.tracecode: layout, Luhn digit, validation wherever a code is read."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge import TraceCodeError
from edge.sale import Sale
from edge.tracecode import (
    TraceCode,
    check_sale_trace,
    luhn_check_digit,
    make_trace_code,
    parse_trace_code,
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


def _sale(stall_id: str, receipt_no: int, code: str) -> Sale:
    return Sale.model_validate({
        "sale_id": str(uuid.UUID(int=7)), "stall_id": stall_id, "receipt_no": receipt_no,
        "sold_at": "2026-11-28T08:15:02+08:00", "trace_code": code,
        "lines": [{"plu": "1", "name": "葱", "quantity": 1, "unit_price_fen": 100,
                   "price_unit": "piece", "amount_fen": 100}],
        "total_fen": 100, "prev_hash": "0" * 64,
    })


def test_check_sale_trace() -> None:
    assert check_sale_trace(_sale("S01", 42, "31010600100100000425")).receipt_no == 42
    with pytest.raises(TraceCodeError, match="names stall 1, the sale is S02"):
        check_sale_trace(_sale("S02", 42, "31010600100100000425"))
    # A Sale refuses a bad check digit itself; check_sale_trace catches one built unchecked.
    with pytest.raises(ValidationError, match=r"31010600100100000421 fails its check digit"):
        _sale("S01", 42, "31010600100100000421")
    unchecked = Sale.model_construct(**{**dict(_sale("S01", 42, "31010600100100000425")),
                                        "trace_code": "31010600100100000421"})
    with pytest.raises(TraceCodeError, match="fails its check digit"):
        check_sale_trace(unchecked)


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
