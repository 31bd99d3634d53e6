"""``wetmarket receipt``: the contract command, its refusals, and nothing written on refusal."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from edge.cli import main
from edge.integrity import public_key_b64
from edge.receipt import ReceiptMeta, render_receipt

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
    assert _refused([str(path), "--out", str(out), "--png", str(png)], capsys).endswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sale.json"]


def test_down_jiao_sale_needs_its_rule(tmp_path: pathlib.Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = write_json(tmp_path / "sale.json", make_sale(rule="down-jiao").to_json())
    out = tmp_path / "r.bin"
    assert "= 307 分 (half-up)" in _refused([str(path), "--out", str(out)], capsys)
    assert main(["receipt", str(path), "--out", str(out), "--rule", "down-jiao"]) == 0
    assert "计价规则：金额向下取整到角（让利" in decode(out.read_bytes()).text


def test_other_refusals(sale_file: pathlib.Path, tmp_path: pathlib.Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "r.bin")
    assert _refused([str(tmp_path / "none.json"), "--out", out], capsys) == (
        f"sale file {tmp_path / 'none.json'} does not exist")
    broken = tmp_path / "broken.json"
    broken.write_text('{"sale_id": ', encoding="utf-8")
    assert _refused([str(broken), "--out", out], capsys) == (
        f"sale file {broken} is not JSON: line 1 column 13: Expecting value")
    assert _refused([str(sale_file), "--out", out, "--public-key", public_key_b64(
        __import__("cryptography.hazmat.primitives.asymmetric.ed25519", fromlist=["x"])
        .Ed25519PrivateKey.from_private_bytes(bytes(32)))], capsys) == (
        "receipt 31010600100100000425: the signature does not verify with this stall key")
    meta = write_json(tmp_path / "meta.json", {"colour": "red"})
    assert _refused([str(sale_file), "--out", out, "--meta", str(meta)], capsys) == (
        "receipt settings: colour: Extra inputs are not permitted")
    assert _refused([str(sale_file), "--out", str(tmp_path / "no" / "r.bin")], capsys) \
        .startswith("cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "broken.json", "meta.json", "sale.json"]


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
