"""Teaching by refitting the classifier's prototypes (numpy only: it runs at the stall).

A vendor teaches an item from a handful of photos taken one after the other:
one session, one light, one batch of the produce.  Scored on their own, the
cosines to those photos are not comparable with the cosines to the trained
prototypes (which average many sessions), so a taught look-alike variety
(Pink Lady beside the catalogue's Royal Gala) loses to the catalogue label
or buries it.  Measured on classes held out of training, the embedding tells
the taught items apart well (85 to 90 % among themselves); what fails is the
competition with the catalogue.

So teaching refits the cosine classifier: every prototype, catalogue and
taught, is trained a few hundred milliseconds on the taught photos plus a
small set of catalogue photos' embeddings shipped with the model
(``<model>.exemplars.npz``), with balanced class weights.  The network is not
touched; only its last layer moves, and only as far as the taught items need.
A taught item's logit then gets a bias fitted on held-out classes, the price
of recall for items seen in one session only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model import ModelFileError

if TYPE_CHECKING:
    from model.data import Dataset

logger = logging.getLogger(__name__)

# Chosen by teaching classes held out of training (bench/teaching_bench.py):
# a softer scale than the trained head's 32 keeps the refit from
# overfitting a handful of near-identical photos.
REFIT_SCALE = 12.0
REFIT_EPOCHS = 100
REFIT_LR = 0.05
# Catalogue photos per label shipped with the model: 10 lose ~8 points of the
# catalogue, 20 and 40 measure the same.
EXEMPLARS_PER_LABEL = 20


@dataclass(frozen=True)
class Exemplars:
    """The trained prototypes and a few catalogue photos' embeddings, per model."""

    prototypes: np.ndarray  # (n_labels, dim) unit rows, the network's classifier
    embeddings: np.ndarray  # (n, dim) unit rows
    labels: np.ndarray  # (n,) index into the model's labels
    embedding_space: str

    @classmethod
    def read(cls, path: Path, n_labels: int, dim: int, embedding_space: str) -> Exemplars:
        try:
            with np.load(path, allow_pickle=False) as z:
                ex = cls(np.asarray(z["prototypes"], np.float32), np.asarray(z["embeddings"], np.float32),
                         np.asarray(z["labels"], np.int64), str(z["embedding_space"]))
        except FileNotFoundError as exc:
            raise ModelFileError(f"{path}: exemplars missing") from exc
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelFileError(f"{path}: exemplars unreadable ({exc})") from exc
        if ex.embedding_space != embedding_space:
            raise ModelFileError(f"{path}: exemplars of {ex.embedding_space}, model is {embedding_space}")
        fits = (ex.prototypes.shape == (n_labels, dim) and ex.embeddings.ndim == 2
                and ex.embeddings.shape[1] == dim and ex.labels.shape == (len(ex.embeddings),)
                and bool(np.all((ex.labels >= 0) & (ex.labels < n_labels)))
                and bool(np.all(np.isfinite(ex.embeddings))) and bool(np.all(np.isfinite(ex.prototypes))))
        if not fits:
            raise ModelFileError(f"{path}: exemplars do not fit a model of {n_labels} labels x {dim}")
        return ex

    def write(self, path: Path) -> str:
        """Write (embeddings as float16: 2.5 MB for 50 labels) and return the file's sha256."""
        with path.open("wb") as fh:
            np.savez_compressed(fh, prototypes=self.prototypes.astype(np.float32),
                                embeddings=self.embeddings.astype(np.float16),
                                labels=self.labels.astype(np.int16), embedding_space=self.embedding_space)
        return hashlib.sha256(path.read_bytes()).hexdigest()


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def exemplar_rows(labels: np.ndarray, classes: Iterable[int],
                  per_label: int = EXEMPLARS_PER_LABEL) -> list[int]:
    """Rows of ``labels`` shipped as exemplars: ``per_label`` per class, evenly spread over its
    photos (so over its sessions)."""
    rows: list[int] = []
    for c in classes:
        idx = np.where(labels == c)[0]
        rows += idx[np.linspace(0, len(idx) - 1, min(per_label, len(idx))).astype(int)].tolist()
    return rows


def refit_prototypes(init: np.ndarray, x: np.ndarray, y: np.ndarray, scale: float = REFIT_SCALE,
                     epochs: int = REFIT_EPOCHS, lr: float = REFIT_LR) -> np.ndarray:
    """Unit prototypes for ``scale * cos(x, prototype)`` logits, by full-batch Adam from ``init``.

    Cross-entropy with every class weighing the same whatever its number of
    rows: a taught item has 20 views, a catalogue label 20 photos, a corrected
    label more.  Deterministic: same inputs, same prototypes.
    """
    # float32: twice as fast as float64 and the prototypes are stored as float32 anyway
    x = unit(np.asarray(x, np.float32))
    w = np.asarray(init, np.float32).copy()
    n_cls = w.shape[0]
    counts = np.bincount(y, minlength=n_cls).astype(np.float32)
    weight = 1.0 / counts[y]
    weight /= weight.sum()
    onehot = np.zeros((len(y), n_cls), np.float32)
    onehot[np.arange(len(y)), y] = 1.0
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    b1, b2, eps = 0.9, 0.999, 1e-8
    s32 = np.float32(scale)
    for t in range(1, epochs + 1):
        norm = np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
        wn = w / norm
        z = s32 * x @ wn.T
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        dz = (p - onehot) * weight[:, None]
        dwn = s32 * dz.T @ x
        # through the normalisation: the gradient's part along each prototype vanishes
        grad = (dwn - wn * np.sum(dwn * wn, axis=1, keepdims=True)) / norm
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        w -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return unit(w).astype(np.float32)


@dataclass(frozen=True)
class TaughtHead:
    """The refit classifier: a row per catalogue label, then a row per label taught at the stall."""

    labels: list[str]  # a taught label may repeat a catalogue label (a vendor's correction)
    prototypes: np.ndarray  # (n_rows, dim) unit rows
    n_catalogue: int
    scale: float
    bias: float  # added to taught rows' cosines

    def logits(self, emb: np.ndarray) -> np.ndarray:
        """(..., n_rows) logits, one per row of ``labels``."""
        z = self.scale * (np.asarray(emb, np.float32) @ self.prototypes.T)
        z[..., self.n_catalogue:] += self.scale * self.bias
        return z

    def temperature(self, model_temperature: float, model_scale: float, factor: float) -> float:
        """The temperature of this head's logits: the model's was fitted to the trained head's
        scale, so scale / temperature is kept, softened by ``factor``, as much as classes held out
        of training say a refit head needs (``teach.temperature_factor``)."""
        return model_temperature * self.scale / model_scale * factor

    def label_logits(self, emb: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Distinct labels and their logits for one embedding: a corrected catalogue label keeps
        the higher of its two rows, so a vendor's correction raises it and never buries it."""
        z = self.logits(emb)
        out = list(dict.fromkeys(self.labels))
        index = {lab: i for i, lab in enumerate(out)}
        merged = np.full(len(out), -np.inf)
        for lab, v in zip(self.labels, z, strict=True):
            merged[index[lab]] = max(merged[index[lab]], v)
        return out, merged

    @classmethod
    def read(cls, path: Path, key: str) -> TaughtHead | None:
        """The head cached at ``path`` if it was fitted for ``key`` (the gallery and model), else None.

        A cache is only a shortcut: a missing, foreign or broken file means
        refitting, with a warning for a broken one, never an error.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != key:
                    return None
                head = cls([str(x) for x in z["labels"]], np.asarray(z["prototypes"], np.float32),
                           int(z["n_catalogue"]), float(z["scale"]), float(z["bias"]))
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - whatever np.load raises on a damaged file
            logger.warning("%s: unreadable refit cache, refitting (%s)", path, exc)
            return None
        if head.prototypes.shape[0] != len(head.labels) or not np.all(np.isfinite(head.prototypes)):
            logger.warning("%s: inconsistent refit cache, refitting", path)
            return None
        return head

    def write(self, path: Path, key: str) -> None:
        """Cache the head at ``path`` atomically; a full or read-only disk costs a warning only."""
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as fh:
                np.savez(fh, key=np.array(key), labels=np.array(self.labels, dtype=str),
                         prototypes=self.prototypes, n_catalogue=np.array(self.n_catalogue),
                         scale=np.array(self.scale), bias=np.array(self.bias))
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("%s: cannot cache the refit (%s)", path, exc.strerror or exc)


def build_head(catalogue: list[str], ex: Exemplars, taught: np.ndarray, taught_labels: list[str],
               bias: float, scale: float = REFIT_SCALE, epochs: int = REFIT_EPOCHS) -> TaughtHead:
    """Refit the catalogue's prototypes and one per taught label together.

    Every taught label gets its own row, even one spelled like a catalogue
    label (a vendor's correction): its photos are of this stall's batch, in
    this stall's light, and would be drowned among the catalogue's exemplars.
    """
    taught_rows = list(dict.fromkeys(taught_labels))
    row = {lab: len(catalogue) + i for i, lab in enumerate(taught_rows)}
    ty = np.array([row[lab] for lab in taught_labels], np.int64)
    taught = np.asarray(taught, np.float32).reshape(len(ty), -1)
    init = np.concatenate([ex.prototypes, np.stack([unit(taught[ty == row[lab]].mean(0))
                                                    for lab in taught_rows])])
    protos = refit_prototypes(init, np.concatenate([ex.embeddings, taught]),
                              np.concatenate([ex.labels, ty]), scale, epochs)
    return TaughtHead([*catalogue, *taught_rows], protos, len(catalogue), scale, bias)


# Cosine added to a taught item's logit.  Chosen on classes held out of
# training, for each group on the other groups (bench/teaching_bench.py):
# the best teaching at most 10 points of catalogue cost.
REFIT_BIAS = 0.12
# The refit head's temperature (scaled from the calibrated one) times this factor, chosen
# likewise: the most never-taught items flagged with at most 10 % of produce flagged.
REFIT_TEMPERATURE_FACTOR = 1.5


def write_exemplars(model: Path, ds: Dataset, size: int, embedding_space: str,
                    prototypes: np.ndarray | None = None, crop: float = 1.0) -> dict[str, Any]:
    """Embed ``EXEMPLARS_PER_LABEL`` train photos per label with ``model`` itself (int8 or fp32),
    write ``<model>.exemplars.npz`` and return the metadata's ``teach`` section.

    ``prototypes`` default to the ones the model computes with: least squares
    from its logits on every train photo (logits = scale * embedding @ P.T),
    which also serves a model whose checkpoint is gone.
    """
    from model.preprocess import preprocess, read_photo
    from model.recognizer import ModelRunner

    runner = ModelRunner(model, size)
    labels = np.array([s.label for s in ds.train])
    pick = exemplar_rows(labels, range(len(ds.classes)))
    rows = range(len(ds.train)) if prototypes is None else sorted(set(pick))
    emb, logits = {}, {}
    for i in rows:
        lo, e = runner.run(preprocess(read_photo(ds.train[i].path, size, crop), size))
        emb[i], logits[i] = e[0], lo[0]
    if prototypes is None:
        order = sorted(emb)
        sol, *_ = np.linalg.lstsq(np.stack([emb[i] for i in order]).astype(np.float64),
                                  np.stack([logits[i] for i in order]).astype(np.float64), rcond=None)
        prototypes = sol.T
    ex = Exemplars(unit(np.asarray(prototypes, np.float32)), np.stack([emb[i] for i in pick]),
                   labels[pick], embedding_space)
    path = model.with_name(model.stem + ".exemplars.npz")
    digest = ex.write(path)
    logger.info("%s: %d exemplars of %d labels", path.name, len(pick), len(ds.classes))
    return {"method": "refit", "exemplars": path.name, "exemplars_sha256": digest,
            "per_label": EXEMPLARS_PER_LABEL, "scale": REFIT_SCALE, "epochs": REFIT_EPOCHS,
            "lr": REFIT_LR, "bias": REFIT_BIAS, "temperature_factor": REFIT_TEMPERATURE_FACTOR}
