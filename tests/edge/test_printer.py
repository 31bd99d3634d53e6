"""edge.printing: every backend through python-escpos, status handling, exact bytes."""

from __future__ import annotations

import pathlib
import socket
import sys
from collections.abc import Iterator

import pytest
from escpos.printer import Usb

from edge import ConfigError, PrinterError, PrinterStatusError
from edge.printing import PrinterStatus, make_printer
from edge.printing.status import QUERY_ONLINE, QUERY_PAPER, combine, online_status, paper_status
from edge.receipt import ReceiptMeta, render_receipt

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from escpos_decode import decode  # noqa: E402
from printer_sims import PtyPrinter, TcpPrinter  # noqa: E402
from receipt_samples import make_sale  # noqa: E402

DATA = render_receipt(make_sale(), ReceiptMeta(market_name="平顺菜市场"))
QUERIES = QUERY_ONLINE + QUERY_PAPER


@pytest.fixture
def tcp() -> Iterator[TcpPrinter]:
    printer = TcpPrinter()
    yield printer
    printer.stop()


@pytest.fixture
def pty() -> Iterator[PtyPrinter]:
    printer = PtyPrinter()
    yield printer
    printer.stop()


# A printer that answers gets 2 s (a loaded CI machine must not turn a reply into
# "unknown"); a silent one is waited for 0.3 s only.
ANSWER_S, SILENCE_S = 2.0, 0.3


def network(sim: TcpPrinter, **extra: object):
    return make_printer({"type": "network", "host": "127.0.0.1", "port": sim.port,
                         "timeout_s": ANSWER_S, **extra})


@pytest.mark.parametrize(
    ("reply", "online", "paper"),
    [
        (b"\x12", PrinterStatus.OK, PrinterStatus.OK),
        (b"\x1a", PrinterStatus.OFFLINE, PrinterStatus.PAPER_LOW),  # bit 3
        (b"\x1e", PrinterStatus.OFFLINE, PrinterStatus.PAPER_LOW),  # bits 2-3 near end
        (b"\x72", PrinterStatus.OK, PrinterStatus.PAPER_OUT),       # bits 5-6 paper end
        (b"", PrinterStatus.UNKNOWN, PrinterStatus.UNKNOWN),        # no reply
        (b"\xff", PrinterStatus.UNKNOWN, PrinterStatus.UNKNOWN),    # fixed bits wrong
        (b"\x12\x12", PrinterStatus.UNKNOWN, PrinterStatus.UNKNOWN),
    ],
)
def test_status_bytes(reply: bytes, online: PrinterStatus, paper: PrinterStatus) -> None:
    assert online_status(reply) is online
    assert paper_status(reply) is paper


def test_combined_status() -> None:
    s = PrinterStatus
    assert combine(s.OFFLINE, s.PAPER_OUT) is s.PAPER_OUT
    assert combine(s.UNKNOWN, s.OK) is s.UNKNOWN
    assert combine(s.OK, s.UNKNOWN) is s.UNKNOWN
    assert combine(s.OK, s.PAPER_LOW) is s.PAPER_LOW
    assert not s.UNKNOWN.can_print and s.PAPER_LOW.can_print


def test_dummy_printer_keeps_the_bytes() -> None:
    printer = make_printer({"type": "dummy"})
    assert printer.print_sale(make_sale(), ReceiptMeta(market_name="平顺菜市场")) \
        is PrinterStatus.UNKNOWN
    assert printer.output == DATA
    assert printer.status() is PrinterStatus.UNKNOWN  # a dummy cannot say it is OK


def test_chinese_mode_printer() -> None:
    printer = make_printer({"type": "dummy", "chinese_mode": True})
    printer.print_sale(make_sale(), ReceiptMeta(market_name="平顺菜市场"))
    assert printer.output == render_receipt(
        make_sale(), ReceiptMeta(market_name="平顺菜市场", chinese_mode=True))
    assert printer.output.startswith(b"\x1b@\x1c&")


def test_file_printer_file_and_folder(tmp_path: pathlib.Path) -> None:
    single = tmp_path / "lp0.bin"
    make_printer({"type": "file", "path": str(single)}).print_receipt(DATA)
    assert single.read_bytes() == DATA
    folder = tmp_path / "receipts"
    printer = make_printer({"type": "file", "path": str(folder)})
    printer.print_sale(make_sale(), ReceiptMeta(market_name="平顺菜市场"))
    printer.print_sale(make_sale(receipt_no=43), ReceiptMeta(market_name="平顺菜市场"))
    assert sorted(p.name for p in folder.iterdir()) == [
        "0000042-31010600100100000425.bin", "0000043-31010600100100000433.bin"]
    assert (folder / "0000042-31010600100100000425.bin").read_bytes() == DATA


def test_file_printer_unnamed_jobs_do_not_collide(tmp_path: pathlib.Path) -> None:
    printer = make_printer({"type": "file", "path": str(tmp_path / "jobs")})
    for _ in range(3):
        printer.print_receipt(DATA)
    files = sorted((tmp_path / "jobs").iterdir())
    assert len(files) == 3 and all(f.read_bytes() == DATA for f in files)


def test_file_printer_that_cannot_write(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    printer = make_printer({"type": "file", "path": str(blocker / "lp0.bin")})
    with pytest.raises(PrinterError, match="cannot open"):
        printer.print_receipt(DATA)


def test_network_printer_ok(tcp: TcpPrinter) -> None:
    printer = network(tcp)
    assert printer.print_receipt(DATA) is PrinterStatus.OK
    tcp.wait_closed(1)
    assert bytes(tcp.received) == QUERIES + DATA


@pytest.mark.parametrize(
    ("online", "paper", "status"),
    [(0x12, 0x72, "paper-out"), (0x1A, 0x12, "offline")],
)
def test_network_printer_refuses_when_it_cannot_print(
    tcp: TcpPrinter, online: int, paper: int, status: str
) -> None:
    tcp.online, tcp.paper = online, paper
    with pytest.raises(PrinterStatusError, match=f"^network printer 127.0.0.1:{tcp.port}: "
                                                 f"{status}$") as info:
        network(tcp).print_receipt(DATA)
    assert info.value.status == status
    tcp.wait_closed(1)
    assert bytes(tcp.received) == QUERIES  # nothing of the receipt was sent


def test_network_printer_paper_low_still_prints(tcp: TcpPrinter) -> None:
    tcp.paper = 0x1E
    assert network(tcp).print_receipt(DATA) is PrinterStatus.PAPER_LOW
    tcp.wait_closed(1)
    assert bytes(tcp.received) == QUERIES + DATA


def test_no_reply_is_unknown_not_ok(tcp: TcpPrinter) -> None:
    tcp.online = tcp.paper = None
    assert network(tcp, timeout_s=SILENCE_S).status() is PrinterStatus.UNKNOWN
    assert network(tcp, timeout_s=SILENCE_S).print_receipt(DATA) is PrinterStatus.UNKNOWN
    tcp.wait_closed(2)
    assert bytes(tcp.received) == QUERIES + QUERIES + DATA
    tcp.reset()
    with pytest.raises(PrinterStatusError, match=": unknown$"):
        network(tcp, timeout_s=SILENCE_S, require_status=True).print_receipt(DATA)
    tcp.wait_closed(3)
    assert bytes(tcp.received) == QUERIES


def test_network_printer_not_there() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    printer = make_printer({"type": "network", "host": "127.0.0.1", "port": port,
                            "timeout_s": 0.3})
    with pytest.raises(PrinterError, match=f"^network printer 127.0.0.1:{port}: cannot open"):
        printer.print_receipt(DATA)
    with pytest.raises(PrinterError, match="cannot open"):
        printer.status()


def test_serial_printer_on_a_pty(pty: PtyPrinter) -> None:
    printer = make_printer({"type": "serial", "url": pty.path, "timeout_s": ANSWER_S})
    assert printer.print_receipt(DATA) is PrinterStatus.OK
    assert pty.wait_for(len(QUERIES + DATA)) == QUERIES + DATA
    doc = decode(bytes(pty.received)[len(QUERIES):])
    assert doc.text[0] == "   平顺菜市场"


def test_serial_printer_paper_out_and_silence(pty: PtyPrinter) -> None:
    printer = make_printer({"type": "serial", "url": pty.path, "timeout_s": ANSWER_S})
    pty.paper = 0x72
    with pytest.raises(PrinterStatusError, match="paper-out"):
        printer.print_receipt(DATA)
    assert printer.status() is PrinterStatus.PAPER_OUT
    pty.online = pty.paper = None
    silent = make_printer({"type": "serial", "url": pty.path, "timeout_s": SILENCE_S})
    assert silent.status() is PrinterStatus.UNKNOWN


def test_serial_printer_through_a_pyserial_url(tcp: TcpPrinter) -> None:
    # python-escpos's Serial opens device paths only; the adapter takes any pyserial URL.
    printer = make_printer({"type": "serial", "url": f"socket://127.0.0.1:{tcp.port}",
                            "timeout_s": ANSWER_S})
    assert printer.print_receipt(DATA) is PrinterStatus.OK
    tcp.wait_closed(1)
    assert bytes(tcp.received) == QUERIES + DATA


def test_serial_printer_missing_device(tmp_path: pathlib.Path) -> None:
    printer = make_printer({"type": "serial", "url": str(tmp_path / "ttyUSB9")})
    with pytest.raises(PrinterError, match="^serial printer .*ttyUSB9: cannot open"):
        printer.print_receipt(DATA)


def test_usb_printer_fails_cleanly() -> None:
    printer = make_printer({"type": "usb", "usb_vendor": 0x0416, "usb_product": 0x5011})
    expected = "needs pyusb" if not Usb.is_usable() else "cannot open"
    with pytest.raises(PrinterError, match=f"^usb printer 0416:5011: .*{expected}"):
        printer.print_receipt(DATA)


def test_config_validation() -> None:
    # The stall's flat PrinterConfig dump, with None for what a type does not use.
    flat = {"type": "file", "path": "/tmp/x", "url": None, "host": None, "port": None,
            "usb_vendor": None, "usb_product": None, "width": 80, "encoding": "gbk"}
    settings = make_printer(flat).settings
    assert (settings.width, settings.encoding, settings.port) == (80, "gbk", 9100)
    with pytest.raises(ConfigError, match="^printer config: type: Input should be"):
        make_printer({"type": "laser"})
    with pytest.raises(ConfigError, match="a network printer needs host"):
        make_printer({"type": "network"})
    with pytest.raises(ConfigError, match="a usb printer needs usb_vendor, usb_product"):
        make_printer({"type": "usb"})
    with pytest.raises(ConfigError, match="printer config: colour: Extra inputs"):
        make_printer({"type": "dummy", "colour": "red"})
    with pytest.raises(PrinterError, match="nothing to print"):
        make_printer({"type": "dummy"}).print_receipt(b"")
