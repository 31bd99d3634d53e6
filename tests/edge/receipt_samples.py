"""Sample sales for the receipt, printer and CLI tests (a fixed key: exact signatures)."""

from __future__ import annotations

import uuid
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.integrity import GENESIS_HASH, seal_sale
from edge.pricing import line_amount_fen
from edge.sale import Sale
from edge.tracecode import make_trace_code

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))

TOMATO = {"plu": "1001", "name": "西红柿", "weight_g": 512, "unit_price_fen": 300,
          "price_unit": "500g", "batch_code": "B20261127-07"}
EGGS = {"plu": "2001", "name": "鸡蛋", "quantity": 6, "unit_price_fen": 80,
        "price_unit": "piece"}
PORK = {"plu": "3001", "name": "五花肉", "weight_g": 1234, "unit_price_fen": 3600,
        "price_unit": "kg", "name_en": "Pork belly"}


def priced(line: dict[str, Any], rule: str = "half-up") -> dict[str, Any]:
    amount = line_amount_fen(unit_price_fen=line["unit_price_fen"],
                             price_unit=line["price_unit"], weight_g=line.get("weight_g"),
                             quantity=line.get("quantity"), rule=rule)
    return {**line, "amount_fen": amount}


def sale_dict(lines: list[dict[str, Any]] | None = None, *, receipt_no: int = 42,
              rule: str = "half-up", **changes: Any) -> dict[str, Any]:
    priced_lines = [priced(line, rule) for line in (lines or [TOMATO, EGGS])]
    data: dict[str, Any] = {
        "sale_id": str(uuid.UUID(int=receipt_no)), "stall_id": "S01", "receipt_no": receipt_no,
        "sold_at": "2026-11-28T08:15:02+08:00",
        "trace_code": make_trace_code("310106", 1, 1, receipt_no),
        "lines": priced_lines, "total_fen": sum(line["amount_fen"] for line in priced_lines),
        "prev_hash": GENESIS_HASH, "signature": "",
    }
    data.update(changes)
    return data


def make_sale(lines: list[dict[str, Any]] | None = None, *, signed: bool = True,
              **kwargs: Any) -> Sale:
    data = sale_dict(lines, **kwargs)
    return seal_sale(data, None, KEY) if signed else Sale.model_validate(data)
