"""A stall's gallery of taught items: embeddings per label, on disk, shareable.

Layout of a gallery folder::

    DIR/gallery.npz     embeddings (N, D) float32, labels (N,), added (N,) unix time
    DIR/gallery.json    {"format_version", "embedding_space", "dim", "labels": {label: count}}

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
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model import GalleryError
from model.unknown import nearest_cosine

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
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
        # Bumped on every change: the recognizer refits its classifier when it moves.
        self.version = 0
        self._listeners: list[Callable[[], None]] = []
        self._taught_listeners: list[Callable[[str, np.ndarray], None]] = []
        self._untaught_listeners: list[Callable[[str, np.ndarray], None]] = []
        # The stall recognises on one thread while the vendor teaches on another.
        self._lock = threading.RLock()
        if self.folder is not None and (self.folder / "gallery.npz").exists():
            self._load_file(self.folder / "gallery.npz", merge=False)

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

    def add_many(self, label: str, embs: np.ndarray, offer: bool = True) -> np.ndarray:
        """Teach ``label`` from the rows of ``embs`` (one photo's views): one change, and the
        taught listeners (``add_taught_listener``) hear of it unless ``offer`` is False (a
        vendor's tap that agreed with the guess: the market gains nothing from it).  Imports never
        reach them.  Returns the unit rows added (what ``remove_exemplars`` takes back)."""
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
            self._emb = np.vstack([self._emb, rows])
            self._labels += [label] * len(rows)
            self._added = np.append(self._added, np.full(len(rows), time.time()))
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

    def remove(self, label: str) -> int:
        with self._lock:
            self.version += 1
            removed = self._remove(label)
        self._changed()
        return removed

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
            drop = {i for i, lab in enumerate(self._labels)
                    if lab == label and float(np.max(rows @ self._emb[i], initial=-1.0)) > 1 - 1e-5}
            if drop:
                keep = [i for i in range(len(self._labels)) if i not in drop]
                self._emb = self._emb[keep]
                self._labels = [self._labels[i] for i in keep]
                self._added = self._added[keep]
                self.version += 1
        if drop:
            self._changed()
        # even when the gallery had already let them go (the oldest of a full label): what was
        # offered to the market is still to be withdrawn
        for fn in self._untaught_listeners if untaught else ():
            fn(label, given)
        return len(drop)

    def _remove(self, label: str) -> int:
        keep = [i for i, lab in enumerate(self._labels) if lab != label]
        removed = len(self._labels) - len(keep)
        self._emb = self._emb[keep]
        self._labels = [self._labels[i] for i in keep]
        self._added = self._added[keep]
        return removed

    def _trim(self, label: str) -> None:
        idx = [i for i, lab in enumerate(self._labels) if lab == label]
        if len(idx) <= MAX_PER_LABEL:
            return
        drop = set(idx[: len(idx) - MAX_PER_LABEL])
        keep = [i for i in range(len(self._labels)) if i not in drop]
        self._emb = self._emb[keep]
        self._labels = [self._labels[i] for i in keep]
        self._added = self._added[keep]

    # -- files -----------------------------------------------------------------
    def save(self) -> None:
        """Write the gallery to its folder atomically (a power cut keeps the old one)."""
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_npz(self.folder / "gallery.npz")
            meta = {
                "format_version": FORMAT_VERSION,
                "embedding_space": self.embedding_space,
                "dim": self.dim,
                "labels": self.counts(),
            }
            tmp = self.folder / "gallery.json.tmp"
            tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, self.folder / "gallery.json")
        except OSError as exc:
            raise GalleryError(f"{self.folder}: cannot write gallery ({exc.strerror or exc})") from exc

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
               merge: bool) -> None:
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
            if merge:
                self._emb = np.vstack([self._emb, emb])
                self._labels += labels
                self._added = np.concatenate([self._added, added])
                for lab in set(labels):
                    self._trim(lab)
            else:
                self._emb, self._labels, self._added = emb, labels, added
            self.version += 1
        self._changed()
        logger.info("gallery %s: %d exemplars of %d labels", source, len(labels), len(set(labels)))
