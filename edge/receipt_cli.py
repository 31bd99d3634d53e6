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

Every error names the file (or option) of the user's it is about: the sale
file, the meta or printer file, the output path (never the temporary file
written beside it).  ``--width`` and ``--encoding`` default to the printer
file's, then to 58 mm and GB18030; the preview is laid out for the same
encoding as the bytes, so it shows the same columns.
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
    parser.add_argument("--width", type=int, choices=(58, 80),
                        help="paper, mm (default: the printer file's, else 58)")
    parser.add_argument("--encoding", choices=("gb18030", "gbk"),
                        help="the printer's text encoding (default: the printer file's, "
                             "else gb18030)")
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
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise ReceiptError(f"{what} {path} does not exist") from exc
    except OSError as exc:
        raise ReceiptError(f"{what} {path} cannot be read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ReceiptError(f"{what} {path} is not UTF-8 text: byte {exc.object[exc.start]:#04x} "
                           f"at offset {exc.start}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReceiptError(f"{what} {path} is not JSON: line {exc.lineno} column {exc.colno}: "
                           f"{exc.msg}") from exc


def _load_object(path: pathlib.Path, what: str) -> dict[str, Any]:
    from edge import ReceiptError

    data = _load_json(path, what)
    if not isinstance(data, dict):
        raise ReceiptError(f"{what} {path} must hold a JSON object, not {type(data).__name__}")
    return data


def _first_error(exc: Any) -> tuple[str, str]:
    """(where, message) of a pydantic ValidationError's first error."""
    first = exc.errors()[0]
    return ".".join(str(part) for part in first["loc"]) or "(top level)", first["msg"]


def _write_all(outputs: list[tuple[pathlib.Path, bytes]]) -> None:
    from edge import ReceiptError

    temps: list[tuple[pathlib.Path, pathlib.Path]] = []
    path = outputs[0][0]
    try:
        for path, data in outputs:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temps.append((tmp, path))
            tmp.write_bytes(data)
        for tmp, path in temps:
            os.replace(tmp, path)
    except OSError as exc:
        # Name the user's path: the temporary file beside it is ours, not theirs.
        raise ReceiptError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)


def _option(name: str) -> str:
    return "--" + {"language": "lang"}.get(name, name).replace("_", "-")


def _printer(args: argparse.Namespace) -> tuple[Any, int, str]:
    """The printer of ``--printer`` (None without it), and the width and encoding to render
    for: the options', else the printer file's, else 58 mm and GB18030."""
    from edge import ConfigError

    if not args.printer:
        return None, args.width or 58, args.encoding or "gb18030"
    from edge.printing import make_printer

    config = _load_object(args.printer, "printer config")
    for name in ("width", "encoding"):
        option = getattr(args, name)
        if option is None:
            continue
        if name in config and config[name] != option:
            # Bytes for one encoding or width on a printer set to another misprint.
            raise ConfigError(f"{_option(name)} {option} but printer config {args.printer} "
                              f"says {name} {config[name]!r}")
        config[name] = option
    try:
        printer = make_printer(config)
    except ConfigError as exc:
        raise ConfigError(f"{args.printer}: {exc}") from exc
    return printer, printer.settings.width, printer.settings.encoding


def _meta(args: argparse.Namespace, printer: Any) -> Any:
    from pydantic import ValidationError

    from edge import ConfigError
    from edge.receipt import ReceiptMeta

    fields: dict[str, Any] = _load_object(args.meta, "meta file") if args.meta else {}
    source = dict.fromkeys(fields, f"meta file {args.meta}")
    if printer is not None and printer.settings.chinese_mode:  # it needs FS & first
        fields["chinese_mode"] = True
        source["chinese_mode"] = f"printer config {args.printer}"
    for name in ("rule", "market_name", "market_name_en", "stall_name", "vendor", "base_url",
                 "language", "ean13", "chinese_mode", "reprint"):
        value = getattr(args, name)
        if value is not None:
            fields[name], source[name] = value, _option(name)
    try:
        return ReceiptMeta.model_validate(fields)
    except ValidationError as exc:
        where, message = _first_error(exc)
        origin = source.get(where.split(".")[0], "receipt settings")
        raise ConfigError(f"{origin}: {where}: {message}") from exc


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from edge import EdgeError, IntegrityError, PrinterError, ReceiptError
    from edge.integrity import verify_sale
    from edge.receipt import render_png, render_receipt
    from edge.sale import Sale

    raw = _load_json(args.sale, "sale file")
    try:
        sale = Sale.model_validate(raw)
    except ValidationError as exc:
        where, message = _first_error(exc)
        raise ReceiptError(f"{args.sale} is not a valid sale: {where}: {message}") from exc

    printer, width, encoding = _printer(args)  # checked before anything is written
    meta = _meta(args, printer)
    if args.public_key and not verify_sale(sale, args.public_key):
        raise IntegrityError(f"{args.sale}: receipt {sale.trace_code}: the signature does not "
                             "verify with this stall key")
    try:
        data = render_receipt(sale, meta, width, encoding)  # refuses a sale that does not add up
    except EdgeError as exc:
        raise ReceiptError(f"{args.sale}: {exc}") from exc
    outputs = [(args.out, data)]
    if args.png:
        try:
            outputs.append((args.png, render_png(sale, meta, width, encoding)))
        except EdgeError as exc:  # no font: the sale itself passed above
            raise ReceiptError(f"{args.png}: {exc}") from exc
    _write_all(outputs)
    print(f"receipt {sale.receipt_no:07d} {sale.trace_code}: {len(data)} bytes -> {args.out}"
          + (f", preview -> {args.png}" if args.png else ""))
    if printer is not None:
        try:
            status = printer.print_receipt(data, name=args.out.stem)
        except PrinterError as exc:
            raise PrinterError(f"{args.out} was written but not printed on the printer of "
                               f"{args.printer}: {exc}") from exc
        print(f"printed ({status.value})")
    return 0
