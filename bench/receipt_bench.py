"""Pricing and receipts: the 5 ms budget of a 10-line receipt, native QR against image QR.

    python bench/receipt_bench.py [--runs N] [--json]

Figures (medians and 95th percentiles over N runs, after one cold run):

* ``price+layout+encode``: price 10 lines (edge.pricing), then render_receipt
  (re-check under the rule, layout, GB18030 encoding, native QR bytes);
  the issue's budget is 5 ms;
* ``layout`` / ``layout_gbk``: layout_receipt alone (re-check and layout in
  printer columns, each character's width read from its GB18030 / GBK code);
* ``sale+sign+render``: the same plus building the pydantic Sale and its
  Ed25519 seal, i.e. everything between a stable weight and the bytes;
* QR: ``GS ( k`` native QR bytes against python-escpos's image QR
  (``qr(native=False)``, a raster ``GS v 0``), bytes and time;
* the PNG preview (not in the budget: it is for the screen).

Exit status 1 when the 5 ms budget is missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from escpos.constants import QR_ECLEVEL_M
from escpos.printer import Dummy

from edge.integrity import GENESIS_HASH, seal_sale
from edge.pricing import line_amount_fen
from edge.receipt import ReceiptMeta, layout_receipt, render_png, render_receipt
from edge.receipt.escpos_bytes import native_qr
from edge.sale import Sale
from edge.tracecode import make_trace_code, trace_url

BUDGET_MS = 5.0
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
META = ReceiptMeta(market_name="平顺菜市场", stall_name="老王蔬菜", vendor="王建国",
                   ean13=True)
ITEMS = [("1001", "西红柿", 300, "500g"), ("1002", "黄瓜", 450, "kg"),
         ("1003", "土豆", 260, "500g"), ("1004", "大白菜", 180, "kg"),
         ("1005", "青椒", 599, "500g"), ("1006", "茄子", 520, "kg"),
         ("1007", "胡萝卜", 230, "500g"), ("1008", "五花肉", 3600, "kg"),
         ("1009", "鲫鱼", 1800, "500g"), ("2001", "鸡蛋", 80, "piece")]


def ten_lines() -> list[dict[str, Any]]:
    lines = []
    for index, (plu, name, price, unit) in enumerate(ITEMS):
        weight = None if unit == "piece" else 237 + 131 * index
        quantity = 6 if unit == "piece" else None
        amount = line_amount_fen(unit_price_fen=price, price_unit=unit, weight_g=weight,
                                 quantity=quantity)
        lines.append({"plu": plu, "name": name, "weight_g": weight, "quantity": quantity,
                      "unit_price_fen": price, "price_unit": unit, "amount_fen": amount,
                      "batch_code": f"B20261128-{index:02d}"})
    return lines


def sale_data(lines: list[dict[str, Any]]) -> dict[str, Any]:
    return {"sale_id": str(uuid.UUID(int=42)), "stall_id": "S01", "receipt_no": 42,
            "sold_at": "2026-11-28T08:15:02+08:00",
            "trace_code": make_trace_code("310106", 1, 1, 42), "lines": lines,
            "total_fen": sum(line["amount_fen"] for line in lines),
            "prev_hash": GENESIS_HASH, "signature": ""}


def measure(fn: Callable[[], object], runs: int) -> dict[str, float]:
    start = time.perf_counter()
    fn()
    cold = (time.perf_counter() - start) * 1000
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"cold_ms": round(cold, 3), "median_ms": round(statistics.median(times), 3),
            "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    signed = seal_sale(sale_data(ten_lines()), None, KEY)

    def price_render() -> bytes:
        lines = ten_lines()
        sale = signed if lines == [line.model_dump() for line in signed.lines] else None
        assert sale is not None
        return render_receipt(sale, META, 58, "gb18030")

    def build_sign_render() -> bytes:
        sale = seal_sale(Sale.model_validate(sale_data(ten_lines())), None, KEY)
        return render_receipt(sale, META, 58, "gb18030")

    url = trace_url(META.base_url, signed.trace_code, signed.signature)

    def image_qr() -> bytes:
        printer = Dummy(profile="POS-5890")  # a common 58 mm Chinese printer, 384 dots
        printer.qr(url, native=False, size=6, ec=QR_ECLEVEL_M)
        return printer.output

    receipt = render_receipt(signed, META)
    results: dict[str, Any] = {
        "price+layout+encode": measure(price_render, args.runs),
        "layout": measure(lambda: layout_receipt(signed, META, 58, "gb18030"), args.runs),
        "layout_gbk": measure(lambda: layout_receipt(signed, META, 58, "gbk"), args.runs),
        "sale+sign+render": measure(build_sign_render, args.runs),
        "native_qr": {**measure(lambda: native_qr(url, 6), args.runs),
                      "bytes": len(native_qr(url, 6))},
        "image_qr": {**measure(image_qr, max(10, args.runs // 10)), "bytes": len(image_qr())},
        "png_preview": measure(lambda: render_png(signed, META), max(5, args.runs // 30)),
        "receipt_bytes_native_qr": len(receipt),
        "receipt_bytes_image_qr": len(receipt) - len(native_qr(url, 6)) + len(image_qr()),
        "qr_content_chars": len(url),
    }
    ok = results["price+layout+encode"]["median_ms"] <= BUDGET_MS
    results["budget_ms"], results["within_budget"] = BUDGET_MS, ok
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name in ("price+layout+encode", "layout", "layout_gbk", "sale+sign+render",
                     "native_qr", "image_qr", "png_preview"):
            figures = results[name]
            extra = f", {figures['bytes']} bytes" if "bytes" in figures else ""
            print(f"{name:22s} median {figures['median_ms']:8.3f} ms  p95 "
                  f"{figures['p95_ms']:8.3f} ms  cold {figures['cold_ms']:8.3f} ms{extra}")
        print(f"10-line receipt: {results['receipt_bytes_native_qr']} bytes with native QR, "
              f"{results['receipt_bytes_image_qr']} with an image QR "
              f"({results['qr_content_chars']}-character trace URL)")
        print(f"budget {BUDGET_MS} ms: {'met' if ok else 'MISSED'}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main()["within_budget"] else 1)
