"""The gallery's folder: a SQLite database written a change at a time, read back bit for bit."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from model import GalleryError
from model.gallery import DB_FILE, LEGACY_FILE, MAX_PER_LABEL, Gallery

REPO = Path(__file__).resolve().parents[2]
DIM = 64
SPACE = "space-a"


def rows(rng: np.random.Generator, n: int = 4) -> np.ndarray:
    return rng.normal(size=(n, DIM)).astype(np.float32)


def same(a: Gallery, b: Gallery) -> None:
    ea, la, _ = a.snapshot()
    eb, lb, _ = b.snapshot()
    assert la == lb
    assert ea.tobytes() == eb.tobytes()  # the refit cache is keyed on these bytes
    assert np.array_equal(a._added, b._added)


def test_what_is_saved_comes_back_bit_for_bit_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    g = Gallery(SPACE, DIM, tmp_path)
    assert not (tmp_path / DB_FILE).exists()  # nothing taught, nothing written
    a = g.add_many("Tomato", rows(rng))
    g.add_many("Leek", rows(rng))
    g.add_many("Tomato", rows(rng))
    g.save()
    again = Gallery(SPACE, DIM, tmp_path)
    same(g, again)
    assert again.labels == ["Tomato", "Leek"]

    # every kind of change after a save reaches the file: a voided tap, an item removed, a full
    # label's oldest rows let go, an import
    assert g.remove_exemplars("Tomato", a, untaught=True) == 4
    g.remove("Leek")
    for _ in range(MAX_PER_LABEL // 4 + 3):
        g.add_many("Kale", rows(rng))
    other = Gallery(SPACE, DIM)
    other.add_many("Okra", rows(rng))
    other.export_to(tmp_path / "share.npz")
    g.import_from(tmp_path / "share.npz")
    g.save()
    third = Gallery(SPACE, DIM, tmp_path)
    same(g, third)
    assert third.counts() == {"Tomato": 4, "Kale": MAX_PER_LABEL, "Okra": 4}
    # and the next process goes on from there
    third.add_many("Okra", rows(rng))
    third.save()
    same(third, Gallery(SPACE, DIM, tmp_path))


def test_a_tap_on_a_full_stall_writes_its_rows_not_the_gallery(tmp_path: Path) -> None:
    """The gallery used to be one file rewritten whole at every save: 13 MB a tap on a full
    20-item stall (1280-float rows).  Now a save writes the tap's rows."""
    rng = np.random.default_rng(1)
    g = Gallery(SPACE, 1280, tmp_path)
    for k in range(20):
        g.add_many(f"item-{k}", rng.normal(size=(MAX_PER_LABEL, 1280)).astype(np.float32))
    g.save()
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    size = (tmp_path / DB_FILE).stat().st_size
    assert size > 12e6
    g.add_many("item-3", rng.normal(size=(4, 1280)).astype(np.float32))  # one photo, 4 views
    g.save()
    wal = tmp_path / (DB_FILE + "-wal")
    written = wal.stat().st_size
    # the four rows (20 kB), the pages of the rows the trim let go, the b-tree pages above them
    assert written < 200_000, written
    same(g, Gallery(SPACE, 1280, tmp_path))


def test_a_gallery_folder_from_before_is_moved_into_the_database(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    emb = rows(rng, 8)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    with (tmp_path / LEGACY_FILE).open("wb") as fh:  # the layout saved until 2026-12-06
        np.savez(fh, format_version=np.array(1), embedding_space=np.array(SPACE), embeddings=emb,
                 labels=np.array(["Leek"] * 4 + ["芹菜"] * 4, dtype=str), added=np.arange(8.0))
    g = Gallery(SPACE, DIM, tmp_path)
    assert g.counts() == {"Leek": 4, "芹菜": 4}
    assert (tmp_path / DB_FILE).exists()
    assert not (tmp_path / LEGACY_FILE).exists()
    assert (tmp_path / (LEGACY_FILE + ".migrated")).exists()
    again = Gallery(SPACE, DIM, tmp_path)
    same(g, again)
    assert g.snapshot()[0].tobytes() == emb.tobytes()


def test_a_broken_or_foreign_database_is_named(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / DB_FILE).write_bytes(b"not a database at all" * 100)
    with pytest.raises(GalleryError, match=r"junk/gallery.sqlite3: not a readable gallery"):
        Gallery(SPACE, DIM, tmp_path / "junk")

    g = Gallery("space-b", DIM, tmp_path / "b")
    g.add_many("Leek", rows(np.random.default_rng(3)))
    g.save()
    with pytest.raises(GalleryError, match="taught with another model"):
        Gallery(SPACE, DIM, tmp_path / "b")

    db = sqlite3.connect(tmp_path / "b" / DB_FILE)
    db.execute("UPDATE meta SET value = ? WHERE key = 'embedding_space'", (SPACE,))
    db.execute("UPDATE exemplars SET embedding = x'00' WHERE id = 1")
    db.commit()
    db.close()
    with pytest.raises(GalleryError, match="an embedding of another size"):
        Gallery(SPACE, DIM, tmp_path / "b")


def test_a_save_that_fails_keeps_its_changes_for_the_next(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    g = Gallery(SPACE, DIM, tmp_path)
    g.add_many("Leek", rows(rng))
    (tmp_path / DB_FILE).mkdir()  # where the database goes, something that is not one
    with pytest.raises(GalleryError, match="cannot write gallery"):
        g.save()
    dropped = g.add_many("Kale", rows(rng))
    g.remove_exemplars("Kale", dropped)
    g.add_many("Kale", rows(rng))
    (tmp_path / DB_FILE).rmdir()
    g.save()
    again = Gallery(SPACE, DIM, tmp_path)
    same(g, again)
    assert again.counts() == {"Leek": 4, "Kale": 4}


def test_a_saved_teaching_survives_the_process_being_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from model.gallery import Gallery
        g = Gallery({SPACE!r}, {DIM}, {str(tmp_path)!r})
        g.add_many("Leek", np.ones((4, {DIM}), np.float32))
        g.save()
        print("saved", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "saved"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert Gallery(SPACE, DIM, tmp_path).counts() == {"Leek": 4}


def test_tagged_rows_are_found_renamed_and_taken_back_after_a_restart(tmp_path: Path) -> None:
    """The stall tags a tap's photo with its basket line; a void after a restart finds it by the
    tag alone, in a database written before tags existed too."""
    rng = np.random.default_rng(5)
    # a database from before the tag column: the same table without it
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     "CREATE TABLE exemplars (id INTEGER PRIMARY KEY, label TEXT NOT NULL, "
                     "added REAL NOT NULL, embedding BLOB NOT NULL);")
    old = rows(rng)
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    db.executemany("INSERT INTO meta VALUES (?, ?)", [("format_version", "1"), ("embedding_space", SPACE),
                                                      ("dim", str(DIM))])
    db.executemany("INSERT INTO exemplars VALUES (?, ?, ?, ?)",
                   [(i + 1, "Leek", 0.0, r.astype("<f4").tobytes()) for i, r in enumerate(old)])
    db.commit()
    db.close()

    g = Gallery(SPACE, DIM, tmp_path)
    assert g.counts() == {"Leek": 4} and g.tagged("b1/1") is None
    heard: list[tuple[str, int]] = []
    g.add_untaught_listener(lambda label, r: heard.append((label, len(r))))
    g.add_many("Tomato", rows(rng), tag="b1/1")
    g.add_many("Tomato", rows(rng), tag="b1/tap-x")  # a tap made while settling
    g.save()
    g.retag("b1/tap-x", "b1/2")  # its line priced after the save: an update of saved rows
    kale = g.add_many("Kale", rows(rng), tag="b1/3")
    g.retag("b1/3", "b1/4")  # renamed before it was ever saved
    g.save()
    g.close()

    again = Gallery(SPACE, DIM, tmp_path)  # the restart
    same(g, again)
    assert again.tagged("b1/1") == "Tomato" and again.tagged("b1/2") == "Tomato"
    assert again.tagged("b1/tap-x") is None and again.tagged("b1/3") is None
    again.add_untaught_listener(lambda label, r: heard.append((label, len(r))))
    assert again.remove_tagged("b1/2") == ("Tomato", 4)
    label, n = again.remove_tagged("b1/4")
    assert (label, n) == ("Kale", 4) and heard == [("Tomato", 4), ("Kale", 4)]
    assert again.remove_tagged("b1/4") == (None, 0)  # twice: nothing more
    again.save()
    third = Gallery(SPACE, DIM, tmp_path)
    assert third.counts() == {"Leek": 4, "Tomato": 4} and third.tagged("b1/1") == "Tomato"
    assert not np.any(np.isclose(third.snapshot()[0] @ kale.T, 1.0))
