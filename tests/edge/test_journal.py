"""The stall's durable journal: numbering, chaining, upload states, crash safety."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from edge import JournalError
from edge.integrity import GENESIS_HASH, chain_problems, sale_digest
from edge.journal import CACHE_KIB, Journal
from edge.sale import Sale
from tests.server.conftest import StallSim


def _builder(sim: StallSim):  # type: ignore[no-untyped-def]
    def build(receipt_no: int, prev_hash: str) -> Sale:
        sim.receipt_no = receipt_no - 1
        sim.prev = prev_hash
        return Sale.model_validate(sim.sale([("1", "香蕉", 1000, 690, "kg")]))
    return build


def test_numbers_and_chain(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3", first_receipt_no=41)
    sim = StallSim()
    sales = [j.append(_builder(sim)) for _ in range(3)]
    assert [s.receipt_no for s in sales] == [41, 42, 43]
    assert sales[0].prev_hash == GENESIS_HASH
    assert sales[1].prev_hash == sale_digest(sales[0])
    assert chain_problems(j.all_sales()) == []
    j.close()
    # Reopened after a restart, it continues the same chain.
    j2 = Journal(tmp_path / "j.sqlite3")
    s4 = j2.append(_builder(sim))
    assert s4.receipt_no == 44 and s4.prev_hash == sale_digest(sales[2])


def test_failed_build_writes_nothing(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")

    def boom(_n: int, _p: str) -> Sale:
        raise ValueError("printer exploded")

    with pytest.raises(ValueError):
        j.append(boom)
    assert j.all_sales() == []
    s = j.append(_builder(StallSim()))
    assert s.receipt_no == 1


def test_builder_must_use_allocated_numbers(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    sim = StallSim()
    def wrong_prev(_n: int, _p: str) -> Sale:
        return Sale.model_validate({**sim.sale([("1", "香蕉", 1000, 690, "kg")]), "prev_hash": "a" * 64})

    with pytest.raises(JournalError, match="ignored"):
        j.append(wrong_prev)
    assert j.all_sales() == []


def test_upload_states(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    sim = StallSim()
    a, b = j.append(_builder(sim)), j.append(_builder(sim))
    assert [d["sale_id"] for d in j.pending()] == [str(a.sale_id), str(b.sale_id)]
    j.mark(str(a.sale_id), "sent")
    j.mark(str(b.sale_id), "refused", "bad amount")
    assert j.pending() == [] and j.counts() == {"pending": 0, "sent": 1, "refused": 1}
    j.append(_builder(sim))
    assert j.waiting() == {"pending": 1, "refused": 1}


def test_what_waits_is_counted_without_reading_the_sales_sent(tmp_path: Path) -> None:
    """The screens ask once a second for a journal that is never pruned: the count reads a
    range of the upload-state index for each state shown, never every sale."""
    j = Journal(tmp_path / "j.sqlite3")
    plan = " ".join(row[-1] for row in j._db.execute(f"EXPLAIN QUERY PLAN {j._WAITING}"))  # noqa: SLF001
    assert plan.count("USING COVERING INDEX sales_pending (upload_state=?)") == 2, plan
    assert "SCAN" not in plan, plan


def _append_then_die(path: str) -> None:
    j = Journal(path)
    j.append(_builder(StallSim()))
    os._exit(0)  # no close, no cleanup: as a power cut would leave it


def test_committed_sale_survives_abrupt_exit(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    p = multiprocessing.get_context("fork").Process(target=_append_then_die, args=(str(path),))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert len(Journal(path).all_sales()) == 1


def test_unwritable_journal_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(JournalError, match="cannot open sale journal"):
        Journal(blocker / "j.sqlite3")


def _sqlite_memory_used() -> Callable[[], int]:
    """``sqlite3_memory_used`` of the SQLite library this process's ``sqlite3`` runs on (the
    same instance, found in the process's mappings); skips where it cannot be reached."""
    maps = Path("/proc/self/maps")
    paths = {line.split()[-1] for line in maps.read_text().splitlines()
             if "libsqlite3" in line} if maps.exists() else set()
    if len(paths) != 1:
        pytest.skip("sqlite3 is not linked to one shared libsqlite3 here")
    lib = ctypes.CDLL(paths.pop())
    lib.sqlite3_libversion.restype = ctypes.c_char_p
    if lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:
        pytest.skip("another libsqlite3 than the sqlite3 module's")
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return lib.sqlite3_memory_used  # type: ignore[no-any-return]


def test_page_cache_stays_bounded_as_sales_accumulate(tmp_path: Path) -> None:
    # SQLite keeps every page it touches until its cache is full (2,000 KiB by default): the
    # stall's RSS grew about 1 KB a sale for its first 2,000 sales.  Held to CACHE_KIB, the
    # journal's memory is full after a few hundred sales and then stays put.
    memory_used = _sqlite_memory_used()
    j = Journal(tmp_path / "j.sqlite3")
    assert j._db.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
    sim = StallSim()
    build = _builder(sim)

    def sell(n: int) -> None:
        for i in range(n):
            sale = j.append(build)
            if i % 2:
                j.mark(str(sale.sale_id), "sent")  # as the outbox does
            if i % 10 == 0:
                j.counts()  # as the screens do, every second

    sell(400)  # the cache fills
    warm = memory_used()
    sell(1200)  # unbounded (the default), this grew by about 1.1 MB
    grown = memory_used() - warm
    j.close()
    assert grown < 300_000, f"the journal's SQLite memory grew {grown / 1e3:.0f} KB over 1,200 sales"
