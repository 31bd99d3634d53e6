"""Training data: the Grocery Store layout or plain ``label/*.jpg`` trees.

Two layouts are understood:

* the Grocery Store Dataset layout: ``classes.csv`` plus ``train.txt`` /
  ``val.txt`` whose lines are ``path, fine_id, coarse_id`` relative to the root;
* a tree ``ROOT/<label>/*.jpg`` (optionally ``ROOT/train/<label>/...`` and
  ``ROOT/val/<label>/...``), the label being the folder name.

Everything here is plain Python (no torch) so the runtime and the tests can use
it too.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from model import ModelError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DatasetError(ModelError):
    """A training folder that cannot be read (the message names the file)."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class Dataset:
    """Class names plus the train and val samples of one folder."""

    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]

    def training_list_hash(self) -> str:
        """SHA-256 over the sorted (relative path, label) pairs of train: which photos built a model."""
        h = hashlib.sha256()
        for s in sorted(self.train, key=lambda s: str(s.path)):
            rel = s.path.relative_to(self.root) if s.path.is_relative_to(self.root) else s.path
            h.update(f"{rel.as_posix()}\t{self.classes[s.label]}\n".encode())
        return h.hexdigest()


def _read_grocery(root: Path) -> Dataset:
    classes_csv = root / "classes.csv"
    try:
        with classes_csv.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise DatasetError(f"{classes_csv}: cannot read ({exc.strerror})") from exc
    by_id: dict[int, str] = {}
    for row in rows[1:]:
        if len(row) < 2:
            continue
        try:
            by_id[int(row[1])] = row[0].strip()
        except ValueError as exc:
            raise DatasetError(f"{classes_csv}: bad class id in row {row!r}") from exc
    if not by_id:
        raise DatasetError(f"{classes_csv}: no classes")
    # Ids need not be contiguous (the subset keeps the original fine ids, with a
    # gap where packaged goods were): labels are indices in id order.
    ids = sorted(by_id)
    index_of = {cid: i for i, cid in enumerate(ids)}
    classes = [by_id[cid] for cid in ids]

    def read_list(name: str) -> list[Sample]:
        path = root / name
        if not path.exists():
            return []
        out: list[Sample] = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split(",")]
            try:
                cid = int(parts[1])
            except (IndexError, ValueError) as exc:
                raise DatasetError(f"{path}:{n}: expected 'path, fine_id, coarse_id'") from exc
            if cid not in index_of:
                raise DatasetError(f"{path}:{n}: class id {cid} not in {classes_csv}")
            out.append(Sample(root / parts[0], index_of[cid]))
        return out

    return Dataset(root, classes, read_list("train.txt"), read_list("val.txt"))


def images_under(folder: Path) -> list[Path]:
    """Every image file under ``folder``, recursively, in name order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_tree(root: Path, val_fraction: float, seed: int) -> Dataset:
    split_dirs = [root / "train", root / "val"]
    if split_dirs[0].is_dir():
        labels = sorted(d.name for d in split_dirs[0].iterdir() if d.is_dir())
        classes = labels
        idx = {c: i for i, c in enumerate(classes)}

        def collect(folder: Path) -> list[Sample]:
            if not folder.is_dir():
                return []
            return [
                Sample(p, idx[d.name])
                for d in sorted(folder.iterdir())
                if d.is_dir() and d.name in idx
                for p in images_under(d)
            ]

        return Dataset(root, classes, collect(split_dirs[0]), collect(split_dirs[1]))
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for i, c in enumerate(classes):
        paths = images_under(root / c)
        rng.shuffle(paths)
        n_val = int(round(len(paths) * val_fraction)) if len(paths) > 1 else 0
        val += [Sample(p, i) for p in paths[:n_val]]
        train += [Sample(p, i) for p in paths[n_val:]]
    return Dataset(root, classes, train, val)


def load_dataset(root: str | Path, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Read a training folder in either layout; raise DatasetError naming what is wrong."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    ds = (
        _read_grocery(root)
        if (root / "classes.csv").exists()
        else _read_tree(root, val_fraction, seed)
    )
    if not ds.classes or not ds.train:
        raise DatasetError(f"{root}: no classes or no training images found")
    logger.info(
        "dataset %s: %d classes, %d train, %d val", root, len(ds.classes), len(ds.train), len(ds.val)
    )
    return ds


def default_dataset_root() -> Path:
    """``../shared/data/grocery-store`` relative to the repository."""
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "grocery-store"
