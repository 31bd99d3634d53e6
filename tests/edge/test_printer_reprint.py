"""edge.reprint: a failed print never loses the sale; a reprint says so on the paper."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator

import pytest

from edge import PrinterError, PrinterStatusError
from edge.printing import PrinterStatus, make_printer
from edge.receipt import ReceiptMeta, render_receipt
from edge.reprint import ReprintQueue, RetryResult

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from escpos_decode import decode  # noqa: E402
from printer_sims import TcpPrinter  # noqa: E402
from receipt_samples import make_sale  # noqa: E402

META = ReceiptMeta(market_name="平顺菜市场", vendor="王建国")
BANNER = "       *** 重印 第{n}次 ***"


@pytest.fixture
def tcp() -> Iterator[TcpPrinter]:
    printer = TcpPrinter(paper=0x72)  # starts with the paper out
    yield printer
    printer.stop()


def test_failed_print_waits_in_the_queue_and_reprints_marked(
    tcp: TcpPrinter, tmp_path: pathlib.Path
) -> None:
    queue_path = tmp_path / "reprint.sqlite3"
    printer = make_printer({"type": "network", "host": "127.0.0.1", "port": tcp.port,
                            "timeout_s": 2.0, "queue": str(queue_path)}, meta=META)
    sales = [make_sale(receipt_no=n) for n in (42, 43)]
    for sale in sales:
        with pytest.raises(PrinterStatusError, match="paper-out"):
            printer.print_sale(sale)
    assert len(printer.queue) == 2

    # The queue is durable: a new process sees the same receipts.
    reopened = ReprintQueue(queue_path)
    waiting = reopened.pending()
    assert [item.sale for item in waiting] == sales
    assert [(item.attempts, item.reprints) for item in waiting] == [(1, 0), (1, 0)]
    assert waiting[0].last_error == f"network printer 127.0.0.1:{tcp.port}: paper-out"
    assert waiting[0].meta == META

    # Still out of paper: nothing printed, attempts counted, both still waiting.
    tcp.wait_closed(2)
    assert reopened.retry(printer) == RetryResult(printed=0, failed=2)
    assert [item.attempts for item in reopened.pending()] == [2, 1]

    tcp.paper = 0x12  # paper loaded
    tcp.wait_closed(3)  # the retry stopped at its first failure: one more connection
    tcp.reset()
    assert printer.retry_queue() == RetryResult(printed=2, failed=0)
    assert len(reopened) == 0 and len(printer.queue) == 0
    assert make_printer({"type": "dummy"}).retry_queue() is None  # no queue configured
    tcp.wait_closed(5)
    assert tcp.closed_count == 5
    jobs = bytes(tcp.received).split(b"\x10\x04\x01\x10\x04\x04")[1:]
    assert jobs == [
        render_receipt(sale, META.model_copy(update={"reprint": 1})) for sale in sales
    ]
    doc = decode(jobs[0])
    assert doc.text[1] == BANNER.format(n=1) and doc.text[-1] == BANNER.format(n=1)


def test_manual_reprints_are_numbered(tmp_path: pathlib.Path) -> None:
    queue = ReprintQueue(tmp_path / "q.sqlite3")
    printer = make_printer({"type": "dummy"})
    sale = make_sale()
    assert queue.reprint(sale, META, printer) is PrinterStatus.UNKNOWN
    first = decode(printer.output)
    assert first.text[1] == BANNER.format(n=1)
    queue.reprint(sale, META, printer)
    second = decode(printer.output[len(render_receipt(sale, META.model_copy(
        update={"reprint": 1}))):])
    assert second.text[1] == BANNER.format(n=2)
    assert len(queue) == 0


def test_a_failed_manual_reprint_is_queued(tmp_path: pathlib.Path) -> None:
    queue = ReprintQueue(tmp_path / "q.sqlite3")
    printer = make_printer({"type": "file", "path": str(tmp_path / "missing" / "x" / "lp0.bin")})
    (tmp_path / "missing").write_text("a file where a folder should be")
    with pytest.raises(PrinterError, match="cannot open"):
        queue.reprint(make_sale(), META, printer)
    assert [item.sale.receipt_no for item in queue.pending()] == [42]


def test_queue_is_idempotent_per_sale(tmp_path: pathlib.Path) -> None:
    queue = ReprintQueue(tmp_path / "q.sqlite3")
    sale = make_sale()
    for error in ("offline", "paper-out"):
        queue.add(sale, META, width=80, encoding="gbk", error=error)
    [item] = queue.pending()
    assert (item.attempts, item.last_error, item.width, item.encoding) == (
        2, "paper-out", 80, "gbk")
    printer = make_printer({"type": "dummy"})
    assert queue.retry(printer) == RetryResult(1, 0)
    # Re-rendered as queued: GBK and 80 mm (48 columns, so the banner centres further).
    assert decode(printer.output, "gbk").text[1] == " " * 15 + "*** 重印 第1次 ***"
    queue.close()


def test_queue_page_cache_is_bounded(tmp_path: pathlib.Path) -> None:
    # A printer offline for hours queues a receipt a sale: the queue's SQLite cache is held to
    # the journal's bound (edge.journal.CACHE_KIB), not SQLite's default 2,000 KiB.
    from edge.journal import CACHE_KIB

    queue = ReprintQueue(tmp_path / "q.sqlite3")
    assert queue._db.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
    queue.close()
