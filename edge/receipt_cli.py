"""``wetmarket receipt``: render a Sale JSON file as ESC/POS bytes and a PNG preview.

    wetmarket receipt SALE.json --out FILE.bin [--png FILE.png] [--width 58|80]
                      [--encoding gb18030|gbk] [--rule half-up|down-jiao]
                      [--meta META.json] [--market-name ...] [--stall-name ...]
                      [--vendor ...] [--base-url URL] [--lang zh|en] [--ean13]
                      [--chinese-mode] [--reprint N] [--public-key B64]
                      [--printer PRINTER.json]

Every line's amount and the total are re-checked against the rounding rule,
and the trace code against the stall and receipt number; a sale that does not
add up is refused (exit 1, one line on stderr) and nothing is written.  With
``--public-key`` the signature must verify too.  Both files are written only
once both are rendered, each through a temporary file and a rename.
"""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "receipt", help="render a sale as an ESC/POS receipt (and a PNG preview)",
        description="Render a Sale JSON file as ESC/POS bytes; refuse a sale that does not "
                    "add up under the pricing rule.")
    parser.add_argument("sale", metavar="SALE.json", type=pathlib.Path)
    parser.add_argument("--out", required=True, type=pathlib.Path, metavar="FILE.bin",
                        help="where the ESC/POS bytes go")
    parser.add_argument("--png", type=pathlib.Path, metavar="FILE.png", help="PNG preview")
    parser.add_argument("--width", type=int, choices=(58, 80), default=58, help="paper, mm")
    parser.add_argument("--encoding", choices=("gb18030", "gbk"), default="gb18030")
    parser.add_argument("--rule", choices=("half-up", "down-jiao"),
                        help="the market's rounding rule (default half-up)")
    parser.add_argument("--meta", type=pathlib.Path, metavar="META.json",
                        help="receipt settings (ReceiptMeta fields); options below override")
    parser.add_argument("--market-name")
    parser.add_argument("--market-name-en")
    parser.add_argument("--stall-name")
    parser.add_argument("--vendor")
    parser.add_argument("--base-url", help="trace page base URL in the QR")
    parser.add_argument("--lang", choices=("zh", "en"), dest="language")
    parser.add_argument("--ean13", action="store_true", default=None,
                        help="print the in-store EAN-13 of the total")
    parser.add_argument("--chinese-mode", action="store_true", default=None,
                        help="send FS & (printer Chinese mode) first")
    parser.add_argument("--reprint", type=int, metavar="N", help="mark as the N-th reprint")
    parser.add_argument("--public-key", metavar="B64",
                        help="refuse unless the sale's signature verifies with this stall key")
    parser.add_argument("--printer", type=pathlib.Path, metavar="PRINTER.json",
                        help="also send to this printer (edge.printing config)")
    parser.set_defaults(run=run)


def _load_json(path: pathlib.Path, what: str) -> Any:
    import json

    from edge import ReceiptError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ReceiptError(f"{what} {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ReceiptError(f"{what} {path} cannot be read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ReceiptError(f"{what} {path} is not JSON: line {exc.lineno} column {exc.colno}: "
                           f"{exc.msg}") from exc


def _first_error(exc: Any) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"{where}: {first['msg']}"


def _write_all(outputs: list[tuple[pathlib.Path, bytes]]) -> None:
    from edge import ReceiptError

    temps: list[tuple[pathlib.Path, pathlib.Path]] = []
    try:
        for path, data in outputs:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            temps.append((tmp, path))
        for tmp, path in temps:
            os.replace(tmp, path)
    except OSError as exc:
        raise ReceiptError(f"cannot write {exc.filename}: {exc.strerror}") from exc
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from edge import ConfigError, IntegrityError, ReceiptError
    from edge.integrity import verify_sale
    from edge.receipt import ReceiptMeta, render_png, render_receipt
    from edge.sale import Sale

    raw = _load_json(args.sale, "sale file")
    try:
        sale = Sale.model_validate(raw)
    except ValidationError as exc:
        raise ReceiptError(f"{args.sale} is not a valid sale: {_first_error(exc)}") from exc

    printer_config = dict(_load_json(args.printer, "printer config")) if args.printer else {}
    meta_fields: dict[str, Any] = dict(_load_json(args.meta, "meta file")) if args.meta else {}
    if printer_config.get("chinese_mode"):  # a printer that needs FS & gets it
        meta_fields["chinese_mode"] = True
    for name in ("rule", "market_name", "market_name_en", "stall_name", "vendor", "base_url",
                 "language", "ean13", "chinese_mode", "reprint"):
        value = getattr(args, name)
        if value is not None:
            meta_fields[name] = value
    try:
        meta = ReceiptMeta.model_validate(meta_fields)
    except ValidationError as exc:
        raise ConfigError(f"receipt settings: {_first_error(exc)}") from exc

    if args.public_key and not verify_sale(sale, args.public_key):
        raise IntegrityError(f"receipt {sale.trace_code}: the signature does not verify "
                             "with this stall key")
    data = render_receipt(sale, meta, args.width, args.encoding)  # refuses a bad sale
    outputs = [(args.out, data)]
    if args.png:
        outputs.append((args.png, render_png(sale, meta, args.width)))
    _write_all(outputs)
    print(f"receipt {sale.receipt_no:07d} {sale.trace_code}: {len(data)} bytes -> {args.out}"
          + (f", preview -> {args.png}" if args.png else ""))
    if args.printer:
        from edge.printing import make_printer

        printer_config.setdefault("width", args.width)
        printer_config.setdefault("encoding", args.encoding)
        status = make_printer(printer_config).print_receipt(data, name=args.out.stem)
        print(f"printed ({status.value})")
    return 0
