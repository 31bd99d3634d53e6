"""``wetmarket receipt``: the contract command, its refusals, and nothing written on refusal."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.cli import main
from edge.integrity import public_key_b64
from edge.receipt import ReceiptMeta, render_png, render_receipt

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from escpos_decode import decode  # noqa: E402
from printer_sims import TcpPrinter  # noqa: E402
from receipt_samples import KEY, make_sale, sale_dict  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def write_json(path: pathlib.Path, data: object) -> pathlib.Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def sale_file(tmp_path: pathlib.Path) -> pathlib.Path:
    return write_json(tmp_path / "sale.json", make_sale().to_json())


def test_renders_bytes_and_png(sale_file: pathlib.Path, tmp_path: pathlib.Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out, png = tmp_path / "r.bin", tmp_path / "r.png"
    assert main(["receipt", str(sale_file), "--out", str(out), "--png", str(png)]) == 0
    assert out.read_bytes() == render_receipt(make_sale(), ReceiptMeta())
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert capsys.readouterr().out == (
        f"receipt 0000042 31010600100100000425: {out.stat().st_size} bytes -> {out}, "
        f"preview -> {png}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.bin", "r.png", "sale.json"]


def test_options_reach_the_paper(sale_file: pathlib.Path, tmp_path: pathlib.Path) -> None:
    meta = write_json(tmp_path / "meta.json", {"market_name": "平顺菜市场", "vendor": "王建国"})
    out = tmp_path / "r.bin"
    assert main(["receipt", str(sale_file), "--out", str(out), "--width", "80",
                 "--encoding", "gbk", "--meta", str(meta), "--stall-name", "老王蔬菜",
                 "--ean13", "--chinese-mode", "--reprint", "1",
                 "--base-url", "https://market.example.cn",
                 "--public-key", public_key_b64(KEY)]) == 0
    data = out.read_bytes()
    assert data.startswith(b"\x1b@\x1c&")
    doc = decode(data, "gbk")
    assert doc.text[0] == "       平顺菜市场"  # 24 double-width columns on 80 mm
    assert doc.text[2] == "摊位 S01 老王蔬菜  摊主 王建国"
    assert doc.text[1].strip() == "*** 重印 第1次 ***"
    assert doc.qr[0].data.startswith("https://market.example.cn/t/31010600100100000425?s=")
    assert [b.data for b in doc.barcodes] == ["2300001007878"]
    assert max(len(line) for line in doc.text) > 32


def test_english(sale_file: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "r.bin"
    assert main(["receipt", str(sale_file), "--out", str(out), "--lang", "en"]) == 0
    assert decode(out.read_bytes()).text[1] == "Stall S01"


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["receipt", *args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wetmarket receipt: error: ")
    return err.removeprefix("wetmarket receipt: error: ").rstrip("\n")


def _bad(**changes: object) -> dict:
    return make_sale().to_json() | changes


@pytest.mark.parametrize(
    ("sale", "message"),
    [
        (_bad(lines=[{**sale_dict()["lines"][0], "amount_fen": 308}, sale_dict()["lines"][1]],
              total_fen=788),
         "line 1 (1001 西红柿): amount_fen 308 but 512 g x 300 分/500g = 307 分 (half-up)"),
        (_bad(total_fen=788), "is not a valid sale: (top level): Value error, total_fen is not "
                              "the sum of the lines' amount_fen"),
        (_bad(trace_code="31010600100100000421"),
         "is not a valid sale: (top level): Value error, trace code 31010600100100000421 "
         "fails its check digit (expected 5)"),
        (_bad(lines=[{**sale_dict()["lines"][1], "unit_price_fen": 0, "amount_fen": 0}],
              total_fen=0), "is not a valid sale: lines.0.unit_price_fen: Input should be "
                            "greater than 0"),
        (_bad(lines=[{**sale_dict()["lines"][0], "weight_g": -5}], total_fen=307),
         "is not a valid sale: lines.0.weight_g: Input should be greater than 0"),
        (_bad(lines=[{**sale_dict()["lines"][0], "price_unit": "斤"}], total_fen=307),
         "is not a valid sale: lines.0.price_unit: Input should be 'kg', '500g' or 'piece'"),
        ([1, 2], "is not a valid sale: (top level): Input should be a valid dictionary or "
                 "instance of Sale"),
    ],
)
def test_refusals_write_nothing(sale: object, message: str, tmp_path: pathlib.Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    path = write_json(tmp_path / "sale.json", sale)
    out, png = tmp_path / "r.bin", tmp_path / "r.png"
    error = _refused([str(path), "--out", str(out), "--png", str(png)], capsys)
    assert error.startswith(str(path)) and error.endswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sale.json"]


def test_string_integers_are_refused_not_coerced(tmp_path: pathlib.Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Needs the Sale model's strict integers (edge/sale.py); the CLI reports its refusal.
    lines = sale_dict()["lines"]
    for changes, where in (({"lines": [{**lines[0], "weight_g": "512"}, lines[1]]},
                            "lines.0.weight_g"),
                           ({"total_fen": "787"}, "total_fen")):
        path = write_json(tmp_path / "sale.json", _bad(**changes))
        assert _refused([str(path), "--out", str(tmp_path / "r.bin")], capsys) == (
            f"{path} is not a valid sale: {where}: Input should be a valid integer")
    meta = write_json(tmp_path / "meta.json", {"reprint": "2"})
    sale = write_json(tmp_path / "sale.json", make_sale().to_json())
    assert _refused([str(sale), "--out", str(tmp_path / "r.bin"), "--meta", str(meta)],
                    capsys) == f"meta file {meta}: reprint: Input should be a valid integer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "sale.json"]


def test_down_jiao_sale_needs_its_rule(tmp_path: pathlib.Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = write_json(tmp_path / "sale.json", make_sale(rule="down-jiao").to_json())
    out = tmp_path / "r.bin"
    assert "= 307 分 (half-up)" in _refused([str(path), "--out", str(out)], capsys)
    assert main(["receipt", str(path), "--out", str(out), "--rule", "down-jiao"]) == 0
    assert "计价规则：金额向下取整到角（让利" in decode(out.read_bytes()).text


def test_missing_unreadable_and_broken_files_are_named(
        sale_file: pathlib.Path, tmp_path: pathlib.Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "r.bin")
    missing, folder = tmp_path / "none.json", tmp_path / "folder.json"
    folder.mkdir()
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"name": "crème"}'.encode("latin-1"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"sale_id": ', encoding="utf-8")
    for option, what in ((None, "sale file"), ("--meta", "meta file"),
                         ("--printer", "printer config")):
        def refused(path: pathlib.Path) -> str:
            args = [str(path), "--out", out] if option is None else \
                [str(sale_file), "--out", out, option, str(path)]  # noqa: B023
            return _refused(args, capsys)
        assert refused(missing) == f"{what} {missing} does not exist"
        assert refused(folder) == f"{what} {folder} cannot be read: Is a directory"
        assert refused(latin1) == f"{what} {latin1} is not UTF-8 text: byte 0xe8 at offset 12"
        assert refused(broken) == (f"{what} {broken} is not JSON: line 1 column 13: "
                                   "Expecting value")
    assert not (tmp_path / "r.bin").exists()


def test_wrong_shapes_are_named(sale_file: pathlib.Path, tmp_path: pathlib.Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "r.bin")
    listed = write_json(tmp_path / "list.json", [1, 2])
    assert _refused([str(listed), "--out", out], capsys) == (
        f"{listed} is not a valid sale: (top level): Input should be a valid dictionary or "
        "instance of Sale")
    assert _refused([str(sale_file), "--out", out, "--meta", str(listed)], capsys) == (
        f"meta file {listed} must hold a JSON object, not list")
    assert _refused([str(sale_file), "--out", out, "--printer", str(listed)], capsys) == (
        f"printer config {listed} must hold a JSON object, not list")
    meta = write_json(tmp_path / "meta.json", {"colour": "red"})
    assert _refused([str(sale_file), "--out", out, "--meta", str(meta)], capsys) == (
        f"meta file {meta}: colour: Extra inputs are not permitted")
    assert _refused([str(sale_file), "--out", out, "--reprint", "1000"], capsys) == (
        "--reprint: reprint: Input should be less than or equal to 999")
    printer = write_json(tmp_path / "printer.json", {"type": "network", "port": 0})
    assert _refused([str(sale_file), "--out", out, "--printer", str(printer)], capsys) == (
        f"{printer}: printer config: port: Input should be greater than 0")
    key = public_key_b64(Ed25519PrivateKey.from_private_bytes(bytes(32)))
    assert _refused([str(sale_file), "--out", out, "--public-key", key], capsys) == (
        f"{sale_file}: receipt 31010600100100000425: the signature does not verify with this "
        "stall key")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "list.json", "meta.json", "printer.json", "sale.json"]


def test_write_errors_name_the_users_path_not_a_temporary_file(
        sale_file: pathlib.Path, tmp_path: pathlib.Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    nowhere = tmp_path / "no" / "r.bin"
    assert _refused([str(sale_file), "--out", str(nowhere)], capsys) == (
        f"cannot write {nowhere}: No such file or directory")
    folder = tmp_path / "r.bin"
    folder.mkdir()
    assert _refused([str(sale_file), "--out", str(folder)], capsys) == (
        f"cannot write {folder}: Is a directory")
    # The bytes could be written, the preview not: neither is left behind.
    out = tmp_path / "ok.bin"
    assert _refused([str(sale_file), "--out", str(out), "--png", str(nowhere)], capsys) == (
        f"cannot write {nowhere}: No such file or directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.bin", "sale.json"]
    assert list(folder.iterdir()) == []


def test_no_cjk_font_refuses_the_preview_and_writes_nothing(
        sale_file: pathlib.Path, tmp_path: pathlib.Path) -> None:
    conf = tmp_path / "fonts.conf"
    conf.write_text('<?xml version="1.0"?>\n<fontconfig><dir>/nonexistent</dir>'
                    f"<cachedir>{tmp_path / 'cache'}</cachedir></fontconfig>\n",
                    encoding="utf-8")
    out, png = tmp_path / "r.bin", tmp_path / "r.png"
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "wetmarket"), "receipt", str(sale_file),
                           "--out", str(out), "--png", str(png)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "FONTCONFIG_FILE": str(conf)})
    assert done.returncode == 1
    assert done.stderr == (
        f"wetmarket receipt: error: {png}: the receipt preview needs a Chinese font, and "
        "fontconfig knows none (fc-list :lang=zh lists nothing): install one, e.g. the Debian "
        "package fonts-wqy-microhei or fonts-noto-cjk\n")
    assert not out.exists() and not png.exists()


def test_the_preview_is_laid_out_for_the_bytes_encoding(tmp_path: pathlib.Path) -> None:
    sale = make_sale([{"plu": "9", "name": "Crème fraîche·法式酸奶油", "quantity": 2,
                       "unit_price_fen": 1500, "price_unit": "piece"}])
    path = write_json(tmp_path / "sale.json", sale.to_json())
    out, png = tmp_path / "r.bin", tmp_path / "r.png"
    assert main(["receipt", str(path), "--out", str(out), "--png", str(png),
                 "--encoding", "gbk"]) == 0
    # î has no GBK code: a "?" in the bytes and in the preview alike.
    assert decode(out.read_bytes(), "gbk").text[6:8] == ["1. Crème fra?che·法式酸奶油", "(9)"]
    assert png.read_bytes() == render_png(sale, ReceiptMeta(), 58, "gbk")
    assert png.read_bytes() != render_png(sale, ReceiptMeta(), 58, "gb18030")


def test_width_and_encoding_default_to_the_printers(
        sale_file: pathlib.Path, tmp_path: pathlib.Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    printer = write_json(tmp_path / "printer.json",
                         {"type": "file", "path": str(tmp_path / "paper.bin"), "width": 80,
                          "encoding": "gbk"})
    out = tmp_path / "r.bin"
    assert main(["receipt", str(sale_file), "--out", str(out), "--printer", str(printer)]) == 0
    assert out.read_bytes() == render_receipt(make_sale(), ReceiptMeta(), 80, "gbk")
    assert (tmp_path / "paper.bin").read_bytes() == out.read_bytes()
    capsys.readouterr()
    assert _refused([str(sale_file), "--out", str(out), "--printer", str(printer),
                     "--encoding", "gb18030"], capsys) == (
        f"--encoding gb18030 but printer config {printer} says encoding 'gbk'")


def test_sends_to_a_printer(sale_file: pathlib.Path, tmp_path: pathlib.Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    sim = TcpPrinter()
    try:
        config = write_json(tmp_path / "printer.json",
                            {"type": "network", "host": "127.0.0.1", "port": sim.port,
                             "chinese_mode": True})
        out = tmp_path / "r.bin"
        assert main(["receipt", str(sale_file), "--out", str(out),
                     "--printer", str(config)]) == 0
        sim.wait_closed(1)
        assert bytes(sim.received) == b"\x10\x04\x01\x10\x04\x04" + out.read_bytes()
        assert out.read_bytes().startswith(b"\x1b@\x1c&")  # the printer's Chinese mode
        assert capsys.readouterr().out.endswith("printed (ok)\n")
    finally:
        sim.stop()


def test_console_script(sale_file: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "r.bin"
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "wetmarket"), "receipt", str(sale_file),
                           "--out", str(out), "--width", "80"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == render_receipt(make_sale(), ReceiptMeta(), 80)
