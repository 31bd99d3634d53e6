"""The stall's produce recognizer: onnxruntime + OpenCV, no torch.

``Recognizer.load()`` opens the shipped model (``model/weights/recognizer.onnx``
and its ``.json``).  ``recognize(image)`` returns the top-k labels with
calibrated probabilities, an ``unknown`` flag and the embedding.  Catalogue
labels come from the network's cosine classifier.  Items taught at the stall
(``teach``) go to the gallery; the classifier's prototypes are then refit on
the taught photos and the catalogue exemplars shipped with the model
(``model.refit``), and catalogue and taught items compete in one softmax.

The refit (~0.5 s on one core) runs on a background thread as soon as the
gallery changes, so the vendor's next weighing does not wait for it, and is
cached in the gallery's folder, so a process that starts with a taught
gallery (``wetmarket recognize --gallery``) does not pay it again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model import ImageError, ModelError, ModelFileError
from model.gallery import Gallery
from model.metrics import softmax
from model.preprocess import (
    Roi,
    as_bgr,
    centre_crop,
    crop_roi,
    decode_target,
    preprocess,
    read_image,
    to_tensor,
    tta_views,
    validate_roi,
)
from model.refit import REFIT_EPOCHS, REFIT_LR, REFIT_SCALE, Exemplars, TaughtHead, build_head, unit
from model.unknown import Mahalanobis, UnknownFlag, nearest_cosine

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = WEIGHTS_DIR / "recognizer.onnx"
# Photos are taught in bursts (``enroll`` with five photos, a correction right
# after a weighing): wait this long after a change so a burst costs one refit.
REFIT_DELAY_S = 0.2
# The background refit thread ends after this long without a change.
REFIT_IDLE_S = 60.0
REFIT_CACHE = "refit-cache.npz"


@dataclass
class Recognition:
    """What the recognizer thinks an image shows."""

    top: list[tuple[str, float]]
    unknown: bool
    ms: float
    embedding: np.ndarray = field(repr=False)

    @property
    def label(self) -> str | None:
        """The best label, or None when the item is not confidently recognised."""
        return None if self.unknown or not self.top else self.top[0][0]

    def to_json(self, image: str) -> dict[str, Any]:
        return {
            "image": image,
            "top": [{"label": lab, "score": round(s, 4)} for lab, s in self.top],
            "unknown": self.unknown,
            "ms": round(self.ms, 2),
        }


@dataclass(frozen=True)
class ModelMeta:
    labels: list[str]
    size: int
    scale: float
    temperature: float
    unknown_threshold: float
    embedding_space: str
    embedding_dim: int
    gallery_gain: float
    gallery_bias: float
    gallery_k: int
    # teaching by refitting the classifier: {"exemplars": file, "bias": cosine}; None: gallery scoring
    teach: dict[str, Any] | None
    raw: dict[str, Any]
    # the top probability + nearest exemplar flag (model.unknown); None: the probability alone
    unknown_flag: UnknownFlag | None = None
    # the centre square of the plate region the network reads, as a fraction of its shorter side
    crop: float = 1.0
    # the photo read with its mirror too, the outputs averaged (``mirror_average``): the
    # temperature and flag were fitted on that reading
    mirror: bool = False
    # ... only when the plain reading is unsure (``mirror_wanted``): its top probability at
    # ``mirror_temperature`` below ``mirror_below``; None: every photo
    mirror_below: float | None = None
    mirror_temperature: float = 1.0
    # the same flag with the Mahalanobis nearness in place of the cosine (``unknown.mahalanobis``,
    # its file beside the model): read in preference where present
    mahalanobis_flag: UnknownFlag | None = None
    mahalanobis_file: str | None = None

    @property
    def exact_int8(self) -> bool:
        return int8_needs_exact_kernels(self.raw)

    @classmethod
    def read(cls, path: Path) -> ModelMeta:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ModelFileError(f"{path}: model metadata missing") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{path}: model metadata unreadable ({exc})") from exc
        try:
            meta = cls(
                labels=[str(x) for x in raw["labels"]],
                size=int(raw["input"]["size"]),
                scale=float(raw["scale"]),
                temperature=float(raw["temperature"]),
                unknown_threshold=float(raw["unknown"]["threshold"]),
                embedding_space=str(raw["embedding_space"]),
                embedding_dim=int(raw["embedding_dim"]),
                gallery_gain=float(raw.get("gallery", {}).get("gain", 1.0)),
                gallery_bias=float(raw.get("gallery", {}).get("bias", 0.0)),
                gallery_k=int(raw.get("gallery", {}).get("k", 3)),
                teach=({"exemplars": str(raw["teach"]["exemplars"]), "bias": float(raw["teach"]["bias"]),
                        "scale": float(raw["teach"].get("scale", REFIT_SCALE)),
                        "epochs": int(raw["teach"].get("epochs", REFIT_EPOCHS)),
                        "temperature_factor": float(raw["teach"].get("temperature_factor", 1.0))}
                       if "teach" in raw else None),
                raw=raw,
                unknown_flag=(UnknownFlag.from_json(raw["unknown"]["nearest_exemplar"])
                              if "nearest_exemplar" in raw["unknown"] else None),
                **_mahalanobis(raw["unknown"]),
                crop=float(raw["input"].get("crop", 1.0)),
                **_mirror_rule(raw["input"].get("mirror", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: model metadata lacks or garbles {exc}") from exc
        if not 0.2 <= meta.crop <= 1.0:
            raise ModelFileError(f"{path}: input.crop {meta.crop} is not a fraction between 0.2 and 1")
        return meta


def int8_needs_exact_kernels(meta: dict[str, Any]) -> bool:
    """False only for int8 weights on onnxruntime's 7-bit grid (``model.training.qat``), which cannot
    saturate the fast u8 x s8 kernels of x86 CPUs without VNNI."""
    bits = (meta.get("int8") or {}).get("weight_bits", 8)
    return not (isinstance(bits, int) and bits <= 7)


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags as Linux lists them (None where /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def int8_kernels_may_saturate() -> bool:
    """Whether onnxruntime's default u8 x s8 kernels can saturate on this CPU."""
    return int8_saturates_on(platform.machine(), cpu_flags())


def int8_saturates_on(machine: str, flags: frozenset[str] | None) -> bool:
    """x86 without VNNI: the default u8 x s8 kernels multiply with VPMADDUBSW there,
    which clips each pair of products at 16 bits.  VNNI (AVX-512 or AVX)
    accumulates in 32 bits and ARM has its own dot products.  An x86 CPU whose
    flags cannot be read counts as saturating, the safe side."""
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    return flags is None or not ({"avx512_vnni", "avx_vnni"} & flags)


class ModelRunner:
    """Owns the onnxruntime session (CPU), warmed up once at start."""

    def __init__(self, path: Path, size: int, threads: int = 1, exact_int8: bool = True) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # One stall process, one camera: a single thread keeps latency steady and
        # leaves the other core to the UI, the journal and the weighing link.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # onnxruntime's own arena keeps the largest buffers it ever needed; the C heap
        # (edge.allocator) hands freed ones back.  Off, the shipped model's p50 is the same
        # (5.54 against 5.51 ms, interleaved, one core), and the stall ended an hour of sales
        # 26 MB smaller with edge.allocator's settings (docs/benchmarks.md, "Stall screens").
        opts.enable_cpu_mem_arena = False
        # On x86 CPUs without VNNI the default u8 x s8 kernels saturate: the shipped
        # int8 model read 77.6 % top-1 there against 85.7 % with VNNI.  This option
        # makes onnxruntime use exact u8 x u8 kernels, but it is not free where it is
        # not needed: on a VNNI CPU it took the shipped model from 6.7 to 11.8 ms for
        # bit-identical outputs (docs/benchmarks.md, "int8 on CPUs without VNNI").
        # exact_int8=False: a model whose weights are on the 7-bit grid (exact on the fast kernels,
        # about a quarter faster there), or bench/recognizer_bench.py's baseline.
        self.exact_kernels = exact_int8 and int8_kernels_may_saturate()
        opts.add_session_config_entry("session.x64quantprecision", "1" if self.exact_kernels else "0")
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except FileNotFoundError as exc:
            raise ModelFileError(f"{path}: model file missing") from exc
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ModelFileError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from exc
        names = [o.name for o in self.session.get_outputs()]
        if names[:2] != ["logits", "embedding"] or self.session.get_inputs()[0].name != "image":
            raise ModelFileError(f"{path}: expected input 'image' and outputs 'logits', 'embedding'")
        self.path = path
        self.run(np.zeros((1, 3, size, size), np.float32))

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            logits, emb = self.session.run(["logits", "embedding"], {"image": x})
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"{self.path}: inference failed ({str(exc).splitlines()[0]})") from exc
        return logits, emb


def mirror_wanted(logits: np.ndarray, temperature: float, below: float) -> np.ndarray:
    """Which photos (rows of ``logits``, the plain reading's) are read with their mirror too under
    ``input.mirror.when_below``: those whose top probability at ``temperature`` is below ``below``.
    Most photos are sure and are read once, so the mirror costs the unsure ones only;
    ``wetmarket model cv --mirror`` fits the mixed reading's temperature and flag with this."""
    return np.asarray(softmax(np.atleast_2d(np.asarray(logits, np.float32)), temperature).max(1) < below)


def mirror_average(plain: np.ndarray, mirrored: np.ndarray, normalise: bool = False) -> np.ndarray:
    """A photo read with its mirror (``input.mirror``): the logits averaged, or (``normalise``) the
    embeddings averaged and made unit length again.  ``wetmarket model cv --mirror`` fits the
    temperature and the unknown flag on exactly this."""
    avg = (np.asarray(plain, np.float32) + np.asarray(mirrored, np.float32)) / 2
    return unit(avg) if normalise else avg


def combine_scores(
    meta: ModelMeta, logits: np.ndarray, gallery_sims: dict[str, float]
) -> tuple[list[str], np.ndarray]:
    """One softmax over the classifier's labels and the gallery's labels.

    A gallery label scores ``scale * (gain * similarity + bias)``: the cosine
    to a few photos is not the cosine to a trained prototype, so gain and bias
    are fitted by teaching classes held out of training (see
    ``model.training.train.held_out_classes``).  A label in both keeps the higher logit,
    so a vendor's correction can raise a catalogue label but never bury it.
    """
    labels = list(meta.labels)
    z = np.asarray(logits, np.float64).copy()
    if gallery_sims:
        index = {lab: i for i, lab in enumerate(labels)}
        extra: list[float] = []
        for lab, sim in gallery_sims.items():
            g = meta.scale * (meta.gallery_gain * sim + meta.gallery_bias)
            if lab in index:
                z[index[lab]] = max(z[index[lab]], g)
            else:
                labels.append(lab)
                extra.append(g)
        z = np.concatenate([z, np.asarray(extra)])
    return labels, softmax(z, meta.temperature)


class Recognizer:
    """Top-k produce recognition with an unknown flag, a gallery and a plate region."""

    def __init__(
        self, runner: ModelRunner, meta: ModelMeta, gallery: Gallery, top_k: int = 5,
        exemplars: Exemplars | None = None, background_refit: bool = True,
        stale_while_refit: bool = False, mahalanobis: Mahalanobis | None = None,
    ) -> None:
        self.runner = runner
        self.meta = meta
        self.gallery = gallery
        self.top_k = top_k
        self.roi: Roi | None = None
        self.exemplars = exemplars
        # what the unknown flag measures the nearness to: the catalogue's exemplars and the taught photos
        self._near_bank = (unit(exemplars.embeddings) if exemplars is not None and meta.unknown_flag
                           else None)
        self.mahalanobis = mahalanobis if meta.mahalanobis_flag is not None else None
        # the taught items' whitened means, of one gallery version: (version, (T, d))
        self._taught_centres: tuple[int, np.ndarray] | None = None
        self._head: tuple[int, TaughtHead] | None = None
        self._head_lock = threading.Lock()
        self._kick = threading.Event()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self._background = background_refit and exemplars is not None and meta.teach is not None
        # A recognition does not wait for a refit: the head before the newest teaching serves
        # until the background thread has the new one (a stall teaching every tap would otherwise
        # hold the next weighing's guesses for the refit's second).
        self.stale_while_refit = stale_while_refit and self._background
        if self._background:
            gallery.add_listener(self._gallery_changed)
            if len(gallery):  # a stall starting with a taught gallery refits before its first weighing
                self._gallery_changed()

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        gallery_dir: str | Path | None = None,
        top_k: int = 5,
        threads: int = 1,
        background_refit: bool = True,
        stale_while_refit: bool = False,
    ) -> Recognizer:
        """Open a model (the shipped one by default) and optionally a stall's gallery folder.

        ``background_refit=False`` for one-shot commands: the refit then happens on
        the first recognition after a change, never on a thread the process may
        exit under.  ``stale_while_refit`` (the stall): a recognition uses the last refit
        classifier while the background thread makes the next one.
        """
        onnx_path = Path(path) if path is not None else DEFAULT_MODEL
        meta_path = onnx_path.with_suffix(".json")
        if not onnx_path.is_file():
            raise ModelFileError(f"{onnx_path}: model file missing")
        meta = ModelMeta.read(meta_path)
        runner = ModelRunner(onnx_path, meta.size, threads, exact_int8=meta.exact_int8)
        n_out = runner.session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(meta.labels):
            raise ModelFileError(
                f"{meta_path}: {len(meta.labels)} labels but {onnx_path.name} has {n_out} outputs"
            )
        exemplars = None
        if meta.teach is not None:
            exemplars = Exemplars.read(onnx_path.with_name(meta.teach["exemplars"]), len(meta.labels),
                                       meta.embedding_dim, meta.embedding_space)
        mahalanobis = None
        if meta.mahalanobis_file is not None:
            mahalanobis = Mahalanobis.read(onnx_path.with_name(meta.mahalanobis_file), len(meta.labels),
                                           meta.embedding_dim, meta.embedding_space)
        gallery = Gallery(meta.embedding_space, meta.embedding_dim, gallery_dir)
        return cls(runner, meta, gallery, top_k, exemplars, background_refit, stale_while_refit, mahalanobis)

    @property
    def labels(self) -> list[str]:
        return list(self.meta.labels)

    def set_roi(self, roi: Roi | None) -> None:
        """Plate region (x, y, w, h) as fractions 0..1 of the image; None for the whole image."""
        self.roi = validate_roi(roi)

    # -- inference -------------------------------------------------------------
    def _load_image(self, image: np.ndarray | str | Path) -> np.ndarray:
        if isinstance(image, str | Path):
            return read_image(image, decode_target(self.meta.size, self.meta.crop))
        return as_bgr(image)

    def network_input(self, image: np.ndarray | str | Path) -> np.ndarray:
        """The network's input (1, 3, S, S) of one image after the plate region crop."""
        bgr = self._load_image(image)
        try:
            return preprocess(bgr, self.meta.size, self.roi, self.meta.crop)
        except Exception as exc:  # noqa: BLE001 - OpenCV errors on degenerate inputs
            raise ImageError(f"{_name(image)}: cannot preprocess ({exc})") from exc

    def embed(self, image: np.ndarray | str | Path) -> tuple[np.ndarray, np.ndarray]:
        """(classifier logits, embedding) of one image after the plate region crop (with
        ``input.mirror``, averaged with its mirror's; with its ``when_below``, only when the plain
        reading is unsure)."""
        x = self.network_input(image)
        m = self.meta
        if m.mirror and m.mirror_below is None:
            # one call with a batch of two: the network's weights are read once for both
            logits, emb = self.runner.run(np.concatenate([x, np.ascontiguousarray(x[..., ::-1])]))
            return mirror_average(logits[0], logits[1]), mirror_average(emb[0], emb[1], normalise=True)
        logits, emb = self.runner.run(x)
        if m.mirror_below is None or not mirror_wanted(logits, m.mirror_temperature, m.mirror_below)[0]:
            return logits[0], emb[0]
        m_logits, m_emb = self.runner.run(np.ascontiguousarray(x[..., ::-1]))
        return mirror_average(logits[0], m_logits[0]), mirror_average(emb[0], m_emb[0], normalise=True)

    def taught_head(self) -> TaughtHead | None:
        """The classifier refit on the gallery (None while nothing is taught or without exemplars).

        Refit once per change of the gallery, by the background thread or, if a
        recognition comes first, here; read from the gallery folder's cache when
        it holds the refit of this very gallery and model.
        """
        if self.exemplars is None or self.meta.teach is None:
            return None
        with self._head_lock:
            emb, labels, version = self.gallery.snapshot()
            if not labels:
                return None
            if self._head is not None and self._head[0] == version:
                return self._head[1]
            key = self._refit_key(emb, labels)
            cache = None if self.gallery.folder is None else self.gallery.folder / REFIT_CACHE
            head = TaughtHead.read(cache, key) if cache is not None else None
            if head is None:
                t0 = time.perf_counter()
                head = build_head(self.meta.labels, self.exemplars, emb, labels, self.meta.teach["bias"],
                                  self.meta.teach["scale"], int(self.meta.teach["epochs"]))
                logger.info("classifier refit on %d taught photos of %d labels in %.2f s", len(labels),
                            len(set(labels)), time.perf_counter() - t0)
                if cache is not None:
                    head.write(cache, key)
            self._head = (version, head)
            return head

    def wait_refit(self, timeout: float = 10.0) -> bool:
        """Block until the background refit has caught up with the gallery (True) or ``timeout``."""
        if self.exemplars is None or self.meta.teach is None:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._head_lock:
                done = not self._kick.is_set() and (
                    not len(self.gallery) or (self._head is not None
                                              and self._head[0] == self.gallery.version))
            if done:
                return True
            time.sleep(0.02)
        return False

    def _gallery_changed(self) -> None:
        with self._worker_lock:
            self._kick.set()
            if self._worker is None:
                self._worker = threading.Thread(target=self._refit_loop, name="refit", daemon=True)
                self._worker.start()

    def _refit_loop(self) -> None:
        while True:
            if not self._kick.wait(REFIT_IDLE_S):
                with self._worker_lock:
                    if not self._kick.is_set():
                        self._worker = None
                        return
                continue
            time.sleep(REFIT_DELAY_S)
            self._kick.clear()
            try:
                self.taught_head()
            except Exception:  # noqa: BLE001 - the next recognition refits and reports it
                logger.exception("background refit failed")

    def _refit_key(self, emb: np.ndarray, labels: list[str]) -> str:
        h = hashlib.sha256(json.dumps([self.meta.embedding_space, self.meta.raw.get("teach"),
                                       REFIT_EPOCHS, REFIT_LR, labels]).encode())
        h.update(np.ascontiguousarray(emb, np.float32).tobytes())
        return h.hexdigest()

    def scores(self, logits: np.ndarray, emb: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Labels and calibrated probabilities over the catalogue plus the taught items."""
        last = self._head
        if not len(self.gallery):
            head = None
        elif self.stale_while_refit and last is not None and last[0] != self.gallery.version:
            head = last[1]  # the background thread, kicked by the change, refits meanwhile
        else:
            head = self.taught_head()
        if head is not None:
            factor = (self.meta.teach or {}).get("temperature_factor", 1.0)
            t = head.temperature(self.meta.temperature, self.meta.scale, factor)
            labels, z = head.label_logits(emb)
            return labels, softmax(z, t)
        sims = self.gallery.similarities(emb, self.meta.gallery_k) if len(self.gallery) else {}
        return combine_scores(self.meta, logits, sims)

    def recognize(self, image: np.ndarray | str | Path, top_k: int | None = None) -> Recognition:
        t0 = time.perf_counter()
        logits, emb = self.embed(image)
        labels, p = self.scores(logits, emb)
        k = max(1, min(top_k or self.top_k, len(labels)))
        order = np.argsort(-p)[:k]
        top = [(labels[i], float(p[i])) for i in order]
        unknown = self.unknown_margin(top[0][1], emb) < 0
        ms = (time.perf_counter() - t0) * 1000
        return Recognition(top=top, unknown=bool(unknown), ms=ms, embedding=emb.astype(np.float32))

    def unknown_margin(self, prob: float, emb: np.ndarray) -> float:
        """How far above the unknown threshold a photo scores (below 0: unknown), from its top
        probability ``prob`` and its embedding."""
        q = unit(np.asarray(emb, np.float32).reshape(-1))
        md, flag = self.mahalanobis, self.meta.mahalanobis_flag
        if md is not None and flag is not None:
            return float(flag.score(prob, float(md.score(q, self.taught_centres())[0])) - flag.threshold)
        flag = self.meta.unknown_flag
        if flag is None or self._near_bank is None:
            return prob - self.meta.unknown_threshold
        near = max(float(nearest_cosine(q, self._near_bank)[0]), self.gallery.nearest(q))
        return float(flag.score(prob, near) - flag.threshold)

    def taught_centres(self) -> np.ndarray | None:
        """The Mahalanobis flag's whitened mean of each item the gallery holds (a taught item is
        known, near its own photos as a catalogue label is near its mean); None while nothing is
        taught.  Once per change of the gallery: one product with the whitening per label."""
        if self.mahalanobis is None:
            return None
        last = self._taught_centres
        if last is not None and last[0] == self.gallery.version:
            return last[1]
        emb, labels, version = self.gallery.snapshot()
        if not labels:
            centres = None
        else:
            names = np.asarray(labels)
            means = np.stack([emb[names == lab].mean(0) for lab in dict.fromkeys(labels)])
            centres = self.mahalanobis.whitened(means)
        self._taught_centres = None if centres is None else (version, centres)
        return centres

    # -- teaching --------------------------------------------------------------
    def teach(self, label: str, image: np.ndarray | str | Path, save: bool = True,
              offer: bool = True, tag: str | None = None) -> np.ndarray:
        """Add a photo of ``label`` to the gallery (enrollment or a vendor's correction); the
        exemplars added are returned, for :meth:`forget`.  ``offer``: the gallery's taught
        listeners (sharing with the market) hear of it.  ``tag``: what :meth:`forget_tagged`
        takes back (the stall's basket line the tap was for), saved with the rows.

        The photo is taught with its mirror and two quarter turns: an item lies
        any way round on the plate, and a handful of photos then covers more of
        it (measured: +4 points top-1 for items taught from 5 photos).
        """
        bgr = centre_crop(crop_roi(self._load_image(image), self.roi), self.meta.crop)
        try:
            x = to_tensor(tta_views(bgr, self.meta.size))
        except Exception as exc:  # noqa: BLE001 - OpenCV errors on degenerate inputs
            raise ImageError(f"{_name(image)}: cannot preprocess ({exc})") from exc
        _, emb = self.runner.run(x)
        rows = self.gallery.add_many(label, emb, offer=offer, tag=tag)
        if save:
            self.gallery.save()
        return rows

    def forget(self, label: str, rows: np.ndarray, save: bool = True) -> int:
        """Take back what one :meth:`teach` added (a sale line the vendor voided: the tap that
        taught it was a mistake); the rest of ``label``'s exemplars stay.  How many went."""
        removed = self.gallery.remove_exemplars(label, rows, untaught=True)
        if removed and save:
            self.gallery.save()
        return removed

    def forget_label(self, label: str, save: bool = True) -> int:
        """Everything the gallery holds of ``label`` (taught here or taken from the market):
        the vendor starts that item over from the catalogue's guesses, and what the stall offered
        the market of it is withdrawn (the forgotten listeners).  How many rows went."""
        removed = self.gallery.remove(label, forgotten=True)
        if removed and save:
            self.gallery.save()
        return removed

    def retag(self, old: str, new: str | None, save: bool = True) -> int:
        """What was taught under ``old`` is known as ``new`` from now on; how many rows."""
        moved = self.gallery.retag(old, new)
        if moved and save:
            self.gallery.save()
        return moved

    def forget_tagged(self, tag: str, save: bool = True) -> tuple[str | None, int]:
        """Take back what was taught under ``tag``: (its label or None, how many rows went)."""
        label, removed = self.gallery.remove_tagged(tag)
        if removed and save:
            self.gallery.save()
        return label, removed

    def taught_under(self, tag: str) -> str | None:
        """The label taught under ``tag``, None if nothing is."""
        return self.gallery.tagged(tag)


def _mahalanobis(unknown: dict[str, Any]) -> dict[str, Any]:
    """``unknown.mahalanobis``: the flag's fields and ``file``, the whitening beside the model."""
    if "mahalanobis" not in unknown:
        return {}
    raw = unknown["mahalanobis"]
    return {"mahalanobis_flag": UnknownFlag.from_json(raw), "mahalanobis_file": str(raw["file"])}


def _mirror_rule(value: object) -> dict[str, Any]:
    """``input.mirror``: true (every photo), false, or ``{"when_below": p, "plain_temperature": t}``
    (only a photo whose plain reading's top probability at t is below p)."""
    if isinstance(value, bool):
        return {"mirror": value}
    if isinstance(value, dict) and set(value) == {"when_below", "plain_temperature"}:
        below, t = value["when_below"], value["plain_temperature"]
        if (all(isinstance(v, int | float) and not isinstance(v, bool) for v in (below, t))
                and 0 < below <= 1 and 0 < t < 1e3):
            return {"mirror": True, "mirror_below": float(below), "mirror_temperature": float(t)}
    raise ValueError(f"input.mirror: expected true, false or {{\"when_below\": a probability, "
                     f"\"plain_temperature\": a positive number}}, got {value!r}")


def _name(image: object) -> str:
    return str(image) if isinstance(image, str | Path) else "<array>"
