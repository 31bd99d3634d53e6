"""A stall's gallery of taught items: embeddings per label, on disk, shareable.

Layout of a gallery folder::

    DIR/gallery.sqlite3  SQLite (WAL): table ``exemplars`` (id, label, added unix time, embedding
                         D little-endian float32, tag), table ``meta`` (format_version,
                         embedding_space, dim)
    DIR/gallery.json     {"format_version", "embedding_space", "dim", "labels": {label: count}}

A save writes what changed since the last one, in one transaction: a vendor's tap adds one
photo's four rows (20 kB), where rewriting a whole file cost 13 MB on a full 20-item stall, at
every tap, on the stall's flash.  A folder from before (``gallery.npz``) is read once into the
database and kept aside as ``gallery.npz.migrated``.

A row may carry a ``tag``: the stall tags what a vendor's tap taught with the basket line it
was tapped for, so that voiding that line takes the photo back (``remove_tagged``) even after a
restart, when the basket comes back from disk and nothing in memory says what its taps taught.

The ``embedding_space`` names the trunk that produced the embeddings (from the
model's metadata): a gallery taught with one model is meaningless for another,
so loading or importing one from a different space is refused.

``export_to(file)`` writes one ``.npz`` the market server can pass to other
stalls; ``import_from(file)`` merges such a file into this gallery, and
``import_arrays`` the same arrays received another way (another stall's taught
item through the market server, ``edge.gallery_share``), with the same checks.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model import GalleryError
from model.unknown import nearest_cosine

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DB_FILE = "gallery.sqlite3"
LEGACY_FILE = "gallery.npz"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS exemplars (
    id        INTEGER PRIMARY KEY,
    label     TEXT NOT NULL,
    added     REAL NOT NULL,
    embedding BLOB NOT NULL,
    tag       TEXT
);
"""
# Newest exemplars kept per label (4 views a photo): bounds memory and lookup time at a stall, and
# lets old lighting conditions age out.
MAX_PER_LABEL = 128


# How a label's exemplars are scored against a query: "mean" compares with the
# normalised mean of the exemplars (a prototype, like the classifier's);
# "topk" averages the k best cosines.  Chosen by the held-out-class experiment.
SIMILARITY = "mean"


def label_similarity(sims: np.ndarray, query: np.ndarray, exemplars: np.ndarray, k: int) -> np.ndarray:
    """Similarity of each query to one label from its exemplars.

    ``sims`` is (n_query, n_exemplars) of cosines, ``query`` (n_query, D) and
    ``exemplars`` (n_exemplars, D), all unit vectors.
    """
    if SIMILARITY == "mean":
        proto = exemplars.mean(0)
        proto = proto / max(float(np.linalg.norm(proto)), 1e-12)
        return query @ proto
    return np.sort(sims, axis=1)[:, ::-1][:, :k].mean(1)


class Gallery:
    """Embeddings per label, optionally persisted in a folder."""

    def __init__(self, embedding_space: str, dim: int, folder: str | Path | None = None) -> None:
        self.embedding_space = embedding_space
        self.dim = dim
        self.folder = Path(folder) if folder is not None else None
        self._emb = np.zeros((0, dim), np.float32)
        self._labels: list[str] = []
        self._added = np.zeros((0,), np.float64)
        # Each row's id in the database: a save writes the rows added and deletes the rows
        # dropped since the last one, nothing else.
        self._ids = np.zeros((0,), np.int64)
        self._tags: list[str | None] = []
        self._next_id = 1
        self._unsaved: dict[int, tuple[str, float, bytes, str | None]] = {}
        self._dropped: set[int] = set()
        self._retagged: dict[int, str | None] = {}
        self._db: sqlite3.Connection | None = None
        self._save_lock = threading.Lock()
        # Bumped on every change: the recognizer refits its classifier when it moves.
        self.version = 0
        self._listeners: list[Callable[[], None]] = []
        self._taught_listeners: list[Callable[[str, np.ndarray], None]] = []
        self._untaught_listeners: list[Callable[[str, np.ndarray], None]] = []
        self._forgotten_listeners: list[Callable[[str], None]] = []
        # The stall recognises on one thread while the vendor teaches on another.
        self._lock = threading.RLock()
        if self.folder is not None:
            if (self.folder / DB_FILE).exists():
                self._load_db(self.folder / DB_FILE)
            elif (self.folder / LEGACY_FILE).exists():
                self._migrate(self.folder / LEGACY_FILE)

    # -- queries ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> list[str]:
        """Distinct labels in first-taught order."""
        return list(dict.fromkeys(self._labels))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for lab in self._labels:
            out[lab] = out.get(lab, 0) + 1
        return out

    def similarities(self, emb: np.ndarray, k: int = 3) -> dict[str, float]:
        """Per label, the mean cosine of ``emb`` to its ``k`` nearest exemplars."""
        with self._lock:
            if not self._labels:
                return {}
            q = emb.astype(np.float32)[None]
            sims = q @ self._emb.T
            out: dict[str, float] = {}
            labels = np.asarray(self._labels)
            for lab in self.labels:
                m = labels == lab
                out[lab] = float(label_similarity(sims[:, m], q, self._emb[m], k)[0])
            return out

    def nearest(self, emb: np.ndarray) -> float:
        """The cosine of unit ``emb`` to the nearest taught photo; -1 with nothing taught."""
        with self._lock:
            return float(nearest_cosine(np.asarray(emb, np.float32), self._emb)[0])

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (on the changing thread, outside the gallery's lock) after every change."""
        self._listeners.append(fn)

    def _changed(self) -> None:
        for fn in self._listeners:
            fn()

    def snapshot(self) -> tuple[np.ndarray, list[str], int]:
        """(embeddings, their labels, version), consistent with each other."""
        with self._lock:
            return self._emb.copy(), list(self._labels), self.version

    # -- changes ---------------------------------------------------------------
    def add(self, label: str, emb: np.ndarray) -> None:
        self.add_many(label, np.asarray(emb, np.float32).reshape(1, -1))

    def add_many(self, label: str, embs: np.ndarray, offer: bool = True,
                 tag: str | None = None) -> np.ndarray:
        """Teach ``label`` from the rows of ``embs`` (one photo's views): one change, and the
        taught listeners (``add_taught_listener``) hear of it unless ``offer`` is False (a
        vendor's tap that agreed with the guess: the market gains nothing from it).  Imports never
        reach them.  Returns the unit rows added (what ``remove_exemplars`` takes back); ``tag``
        names them for ``remove_tagged``."""
        label = label.strip()
        if not label:
            raise GalleryError("a taught item needs a non-empty label")
        embs = np.asarray(embs, np.float32)
        if embs.ndim != 2 or embs.shape[1] != self.dim or not len(embs):
            raise GalleryError(f"embeddings of shape {embs.shape} do not fit gallery of size {self.dim}")
        norms = np.linalg.norm(embs, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise GalleryError("embedding is zero or not finite")
        rows = embs / norms
        with self._lock:
            self._append(rows, [label] * len(rows), np.full(len(rows), time.time()),
                         tags=[tag] * len(rows))
            self._trim(label)
            self.version += 1
        self._changed()
        for fn in self._taught_listeners if offer else ():
            fn(label, rows)
        return rows

    def add_taught_listener(self, fn: Callable[[str, np.ndarray], None]) -> None:
        """Call ``fn(label, unit rows)`` after each item taught here (not after an import): the
        stall offers what it was taught to the market (``edge.gallery_share``)."""
        self._taught_listeners.append(fn)

    def remove(self, label: str, forgotten: bool = False) -> int:
        """Every exemplar of ``label``; how many.  ``forgotten``: the vendor disowns what the stall
        was taught of it, and the forgotten listeners hear of it (the stall withdraws its offers)."""
        with self._lock:
            self.version += 1
            removed = self._remove(label)
        self._changed()
        for fn in self._forgotten_listeners if forgotten else ():
            fn(label)
        return removed

    def add_forgotten_listener(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(label)`` after ``remove(label, forgotten=True)``."""
        self._forgotten_listeners.append(fn)

    def add_untaught_listener(self, fn: Callable[[str, np.ndarray], None]) -> None:
        """Call ``fn(label, rows)`` after exemplars taught here are taken back
        (``remove_exemplars(..., untaught=True)``): the stall withdraws what it offered."""
        self._untaught_listeners.append(fn)

    def remove_exemplars(self, label: str, rows: np.ndarray, untaught: bool = False) -> int:
        """Forget ``label``'s exemplars that are ``rows`` (unit vectors, to float precision): an
        imported item taken back, or (``untaught``) what a tap the vendor voided taught here,
        leaving the rest.  How many went."""
        given = rows
        rows = np.asarray(rows, np.float32).reshape(-1, self.dim)
        with self._lock:
            dropped = self._drop([i for i, lab in enumerate(self._labels) if lab == label
                                  and float(np.max(rows @ self._emb[i], initial=-1.0)) > 1 - 1e-5])
        if dropped:
            self._changed()
        # even when the gallery had already let them go (the oldest of a full label): what was
        # offered to the market is still to be withdrawn
        for fn in self._untaught_listeners if untaught else ():
            fn(label, given)
        return dropped

    def tagged(self, tag: str) -> str | None:
        """The label of the rows tagged ``tag``, None if there are none."""
        with self._lock:
            return next((lab for lab, t in zip(self._labels, self._tags, strict=True) if t == tag), None)

    def retag(self, old: str, new: str | None) -> int:
        """Rows tagged ``old`` are tagged ``new`` from now on (saved by the next :meth:`save`);
        how many."""
        with self._lock:
            hit = [i for i, t in enumerate(self._tags) if t == old]
            for i in hit:
                self._tags[i] = new
                row_id = int(self._ids[i])
                if row_id in self._unsaved:
                    self._unsaved[row_id] = (*self._unsaved[row_id][:3], new)
                elif self.folder is not None:
                    self._retagged[row_id] = new
        return len(hit)

    def remove_tagged(self, tag: str) -> tuple[str | None, int]:
        """Take back what was taught under ``tag`` (a voided line's tap), as
        ``remove_exemplars(..., untaught=True)`` does: (its label, how many rows went)."""
        with self._lock:
            hit = [i for i, t in enumerate(self._tags) if t == tag]
            if not hit:
                return None, 0
            label, rows = self._labels[hit[0]], self._emb[hit].copy()
            self._drop(hit)
        self._changed()
        for fn in self._untaught_listeners:
            fn(label, rows)
        return label, len(hit)

    def _remove(self, label: str) -> int:
        keep = [i for i, lab in enumerate(self._labels) if lab != label]
        removed = len(self._labels) - len(keep)
        self._keep(keep)
        return removed

    def _trim(self, label: str) -> None:
        idx = [i for i, lab in enumerate(self._labels) if lab == label]
        if len(idx) > MAX_PER_LABEL:
            self._keep_all_but(idx[: len(idx) - MAX_PER_LABEL])

    def _drop(self, positions: list[int]) -> int:
        """Take the rows at ``positions`` out as a change the recogniser must see (under the
        lock; the caller tells the listeners once the lock is let go); how many."""
        if positions:
            self._keep_all_but(positions)
            self.version += 1
        return len(positions)

    def _keep_all_but(self, positions: list[int]) -> None:
        drop = set(positions)
        self._keep([i for i in range(len(self._labels)) if i not in drop])

    def _append(self, rows: np.ndarray, labels: list[str], added: np.ndarray,
                ids: np.ndarray | None = None, tags: list[str | None] | None = None) -> None:
        """Add rows (under the lock); without ``ids`` (read from the database) they are new, and
        the next :meth:`save` writes them."""
        tags = tags if tags is not None else [None] * len(rows)
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + len(rows), dtype=np.int64)
            for i, lab, t, row, tag in zip(ids.tolist(), labels, added.tolist(), rows, tags, strict=True):
                if self.folder is not None:  # a gallery in memory only has nothing to write
                    self._unsaved[i] = (lab, float(t), np.ascontiguousarray(row, "<f4").tobytes(), tag)
        self._next_id = max(self._next_id, int(ids.max(initial=0)) + 1)
        self._emb = np.vstack([self._emb, rows])
        self._labels += labels
        self._added = np.concatenate([self._added, added])
        self._ids = np.concatenate([self._ids, ids])
        self._tags += tags

    def _keep(self, keep: list[int]) -> None:
        """Keep only the rows at positions ``keep`` (under the lock); the next save deletes the
        others from the database."""
        gone = set(self._ids.tolist()) - set(self._ids[keep].tolist())
        for i in gone:
            self._retagged.pop(i, None)
            if self._unsaved.pop(i, None) is None and self.folder is not None:
                self._dropped.add(i)
        self._emb = self._emb[keep]
        self._labels = [self._labels[i] for i in keep]
        self._added = self._added[keep]
        self._ids = self._ids[keep]
        self._tags = [self._tags[i] for i in keep]

    # -- files -----------------------------------------------------------------
    def save(self) -> None:
        """Write what changed since the last save to the folder's database, in one transaction (a
        power cut keeps the gallery as it was before or after it, never half of it)."""
        if self.folder is None:
            return
        with self._save_lock:
            with self._lock:
                unsaved, dropped, retagged = self._unsaved, self._dropped, self._retagged
                self._unsaved, self._dropped, self._retagged = {}, set(), {}
                counts = self.counts()
            try:
                db = self._connect()
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany("INSERT OR REPLACE INTO exemplars (id, label, added, embedding, tag) "
                                   "VALUES (?, ?, ?, ?, ?)",
                                   [(i, *row) for i, row in unsaved.items()])
                    db.executemany("DELETE FROM exemplars WHERE id = ?", [(i,) for i in dropped])
                    db.executemany("UPDATE exemplars SET tag = ? WHERE id = ?",
                                   [(tag, i) for i, tag in retagged.items()])
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                meta = {"format_version": FORMAT_VERSION, "embedding_space": self.embedding_space,
                        "dim": self.dim, "labels": counts}
                tmp = self.folder / "gallery.json.tmp"
                tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
                os.replace(tmp, self.folder / "gallery.json")
            except (sqlite3.Error, OSError) as exc:
                with self._lock:  # kept for the next save; a row dropped since stays dropped
                    self._unsaved = {**unsaved, **self._unsaved}
                    self._dropped |= dropped
                    self._retagged = {**retagged, **self._retagged}  # a row deleted since: a no-op
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise GalleryError(f"{self.folder}: cannot write gallery ({why})") from exc

    def close(self) -> None:
        """Close the database (a later save opens it again)."""
        with self._save_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _connect(self) -> sqlite3.Connection:
        """The folder's database, made on the first save (a stall that never teaches has none)."""
        if self._db is not None:
            return self._db
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.folder / DB_FILE, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            if "tag" not in _columns(db):  # a database made before rows were tagged
                db.execute("ALTER TABLE exemplars ADD COLUMN tag TEXT")
            db.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                           [("format_version", str(FORMAT_VERSION)),
                            ("embedding_space", self.embedding_space), ("dim", str(self.dim))])
        except sqlite3.Error:
            db.close()
            raise
        self._db = db
        return db

    def _load_db(self, path: Path) -> None:
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise GalleryError(f"{path}: not a readable gallery ({exc})") from exc
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            tag = "tag" if "tag" in _columns(db) else "NULL"
            rows = db.execute(f"SELECT id, label, added, embedding, {tag} FROM exemplars "  # noqa: S608
                              "ORDER BY id").fetchall()
        except sqlite3.Error as exc:
            db.close()
            raise GalleryError(f"{path}: not a readable gallery ({exc})") from exc
        db.close()
        space = str(meta.get("embedding_space", ""))
        if space == self.embedding_space and any(
                not isinstance(r[3], bytes) or len(r[3]) != 4 * self.dim for r in rows):
            raise GalleryError(f"{path}: inconsistent gallery arrays (an embedding of another size)")
        emb = (np.frombuffer(b"".join(r[3] for r in rows), "<f4").reshape(-1, self.dim).astype(np.float32)
               if space == self.embedding_space else np.zeros((0, self.dim), np.float32))
        self._merge(str(path), space, emb, [str(r[1]) for r in rows],
                    np.array([r[2] for r in rows], np.float64), merge=False,
                    ids=np.array([r[0] for r in rows], np.int64),
                    tags=[r[4] if isinstance(r[4], str) else None for r in rows])

    def _migrate(self, legacy: Path) -> None:
        """A folder saved before the database: its file read once, saved whole, set aside."""
        self._load_file(legacy, merge=False)
        self.save()
        os.replace(legacy, legacy.with_name(legacy.name + ".migrated"))
        logger.info("gallery %s: %d exemplars moved into %s", legacy, len(self), DB_FILE)

    def export_to(self, path: str | Path) -> None:
        """One file with everything another stall needs to import this gallery."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_npz(path)
        except OSError as exc:
            raise GalleryError(f"{path}: cannot write gallery ({exc.strerror or exc})") from exc

    def import_from(self, path: str | Path) -> int:
        """Merge an exported gallery; returns how many exemplars were added."""
        before = len(self)
        self._load_file(Path(path), merge=True)
        return len(self) - before

    def import_arrays(self, embedding_space: str, labels: list[str], embeddings: np.ndarray,
                      added: np.ndarray | None = None, source: str = "shared item") -> int:
        """Merge exemplars received other than as a file (another stall's taught item, through
        the market server), with the checks of :meth:`import_from`; how many were added."""
        before = len(self)
        emb = np.asarray(embeddings, np.float32)
        stamps = np.asarray(added, np.float64) if added is not None else np.full(len(labels), time.time())
        self._merge(source, embedding_space, emb, [str(s) for s in labels], stamps, merge=True)
        return len(self) - before

    def _write_npz(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with self._lock, tmp.open("wb") as fh:
            np.savez(
                fh,
                format_version=np.array(FORMAT_VERSION),
                embedding_space=np.array(self.embedding_space),
                embeddings=self._emb,
                labels=np.array(self._labels, dtype=str),
                added=self._added,
            )
        os.replace(tmp, path)

    def _load_file(self, path: Path, merge: bool) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                space = str(z["embedding_space"])
                emb = np.asarray(z["embeddings"], np.float32)
                labels = [str(s) for s in z["labels"]]
                added = np.asarray(z["added"], np.float64) if "added" in z else np.zeros(len(labels))
        except FileNotFoundError as exc:
            raise GalleryError(f"{path}: no such gallery file") from exc
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise GalleryError(f"{path}: not a readable gallery ({exc})") from exc
        self._merge(str(path), space, emb, labels, added, merge)

    def _merge(self, source: str, space: str, emb: np.ndarray, labels: list[str], added: np.ndarray,
               merge: bool, ids: np.ndarray | None = None, tags: list[str | None] | None = None) -> None:
        if space != self.embedding_space:
            raise GalleryError(
                f"{source}: taught with another model (embedding space {space[:12]}, "
                f"this model {self.embedding_space[:12]}); teach the items again"
            )
        if emb.ndim != 2 or emb.shape[1] != self.dim or len(labels) != len(emb) or len(added) != len(emb):
            raise GalleryError(f"{source}: inconsistent gallery arrays")
        if not np.all(np.isfinite(emb)):
            raise GalleryError(f"{source}: gallery holds non-finite embeddings")
        if any(not lab.strip() for lab in labels):
            raise GalleryError(f"{source}: an exemplar without a label")
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise GalleryError(f"{source}: gallery holds a zero embedding")
        # Saved rows are unit already and come back bit for bit (the recognizer's
        # refit cache is keyed on them); only a foreign file's rows are normalised.
        if not np.allclose(norms, 1.0, atol=1e-4):
            emb = emb / np.maximum(norms, 1e-12)
        with self._lock:
            if not merge:
                self._keep([])
            self._append(emb, labels, added, ids, tags)
            if merge:
                for lab in set(labels):
                    self._trim(lab)
            self.version += 1
        self._changed()
        logger.info("gallery %s: %d exemplars of %d labels", source, len(labels), len(set(labels)))


def _columns(db: sqlite3.Connection) -> set[str]:
    return {str(r[1]) for r in db.execute("PRAGMA table_info(exemplars)")}
