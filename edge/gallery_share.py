"""Items taught at one stall offered to the market's other stalls (issue 18 item 4), opt-in.

A stall with ``[gallery] share = true`` signs every item it is taught (a vendor's correction,
``model.gallery.Gallery.add_many``) and uploads it to ``POST /api/v1/gallery``; a stall with
``[gallery] accept = true`` pulls the market's shared items for its model from
``GET /api/v1/gallery`` and imports them into its gallery (``Gallery.import_arrays``, the
checks of the gallery's own import).  Both default to off.

A shared item (:class:`SharedItemDoc`) is one taught photo's exemplars: the label, the PLU
and name it was sold as, the model's identity (``model``: the recogniser's
``embedding_space``, the same key a gallery file is checked on; ``model_sha256``: its ONNX
file), the exemplars as base64 of little-endian float32 rows, when, and an Ed25519
signature by the teaching stall's receipt key (``edge.integrity``) over the SHA-256 of the
document's canonical JSON without ``signature`` (sorted keys, no spaces, UTF-8).

What the receiving stall checks before importing, each refusal logged once and remembered
(``gallery-shared.json``), never imported:

- the item's model is the stall's own (another model's embeddings mean nothing here);
- the signature verifies with the sender stall's public key as the market server has it
  registered (the server sends it with every item: the market server is the stall's key
  directory, as it is for receipts);
- the gallery's own checks (shape, finite, same embedding space).

The uploads wait in ``DATA_DIR/gallery-outbox/`` (one signed file per item, written
atomically) and go up on the back-off loop of the sale outbox (``edge.backoff``); the pull
runs on the same loop, applies only between baskets (like the feed) and keeps each
imported item in ``DATA_DIR/gallery-shared/`` so that an item the manager withdraws is
taken out of the gallery again.  The server away changes nothing at the scale.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.backoff import BackoffSender
from edge.feed import PLU_PATTERN, STALL_PATTERN, TEXT_PATTERN
from edge.files import write_atomic
from edge.folder_outbox import FolderOutbox
from edge.integrity import sign_digest, verify_digest
from edge.outbox import register_key

if TYPE_CHECKING:
    from edge.catalogue import Catalogue, Plu
    from edge.config import StallConfig
    from model.gallery import Gallery

logger = logging.getLogger(__name__)

FORMAT: Literal[1] = 1
#: One taught photo gives 4 exemplars (``Recognizer.teach``); room for a few photos at once.
MAX_EXEMPLARS = 16
MAX_DIM = 4096
#: Items one answer of ``GET /api/v1/gallery`` carries at most (the newest).
MAX_ITEMS = 2000
#: ``POST /api/v1/gallery``: 16 rows of 4096 float32 as base64 are 350 KB.
BODY_LIMIT = 512 * 1024
#: What a stall reads of a ``GET`` answer at most.
MAX_ANSWER_BYTES = 256 * 1024 * 1024

OUTBOX_DIR = "gallery-outbox"
IMPORTED_DIR = "gallery-shared"
STATE_FILE = "gallery-shared.json"
#: What this stall offered, to withdraw it after a restart too (a void of a restored basket's line).
OFFERED_FILE = "gallery-offered.json"

MODEL_PATTERN = r"^[A-Za-z0-9._:+-]{1,128}$"
_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


class SharedItemDoc(BaseModel):
    """An item taught at one stall, as it signs it and every other stall receives it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[1] = Field(description="the shared item's format (1)")
    item_id: str = Field(pattern=_UUID, description="the teaching stall's id of the item (uuid4): "
                         "an upload sent twice is stored once")
    stall_id: str = Field(pattern=STALL_PATTERN, description="the stall that was taught it")
    label: str = Field(min_length=1, max_length=64, pattern=TEXT_PATTERN,
                       description="the recogniser's label: a model label or the item's PLU")
    plu: str | None = Field(None, pattern=PLU_PATTERN, description="the PLU it was sold as at that stall")
    name: str | None = Field(None, max_length=64, pattern=TEXT_PATTERN, description="its name there")
    model: str = Field(pattern=MODEL_PATTERN, description="the model's identity: the recogniser's "
                       "embedding space; only stalls with the same one may use the item")
    model_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                                     description="SHA-256 of the teaching stall's ONNX file")
    dim: int = Field(ge=1, le=MAX_DIM, description="embedding size")
    count: int = Field(ge=1, le=MAX_EXEMPLARS, description="exemplars (rows)")
    embeddings: str = Field(max_length=4 * MAX_DIM * MAX_EXEMPLARS * 4 // 3 + 4,
                            description="count x dim little-endian float32, standard base64")
    taught_at: AwareDatetime
    signature: str = Field("", max_length=128, description="Ed25519 by the teaching stall's "
                           "receipt key over the SHA-256 of the canonical JSON without signature, "
                           "urlsafe base64")

    @model_validator(mode="after")
    def _sized(self) -> SharedItemDoc:
        try:
            raw = base64.b64decode(self.embeddings, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("embeddings: not base64") from None
        if len(raw) != self.count * self.dim * 4:
            raise ValueError(f"embeddings: {len(raw)} bytes, not count x dim x 4 = "
                             f"{self.count * self.dim * 4}")
        if not np.all(np.isfinite(np.frombuffer(raw, "<f4"))):
            raise ValueError("embeddings: not finite")
        return self

    def rows(self) -> np.ndarray:
        """The exemplars, (count, dim) float32."""
        raw = base64.b64decode(self.embeddings)
        return np.frombuffer(raw, "<f4").astype(np.float32).reshape(self.count, self.dim)

    def digest(self) -> str:
        data = self.model_dump(mode="json", exclude={"signature"})
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def verifies(self, public_key: str) -> bool:
        return verify_digest(self.digest(), self.signature, public_key)


class SharedItemOut(BaseModel):
    """A shared item as the market server hands it out."""

    id: int = Field(ge=1, description="the server's number of the shared item")
    public_key: str = Field(max_length=64, description="the teaching stall's signing key, as the "
                            "server has it registered")
    received_at: AwareDatetime
    item: SharedItemDoc


class SharedItemsDoc(BaseModel):
    """``GET /api/v1/gallery``: the market's shared items of one model, but the asking stall's."""

    format: Literal[1]
    model: str = Field(pattern=MODEL_PATTERN)
    items: list[SharedItemOut] = Field(max_length=MAX_ITEMS, description="oldest first")
    withdrawn: list[int] = Field(description="ids of this model's items a manager withdrew")


class ShareResult(BaseModel):
    """``POST /api/v1/gallery``'s answer."""

    id: int
    status: Literal["accepted", "duplicate"]


class WithdrawalDoc(BaseModel):
    """``POST /api/v1/gallery/withdrawals``: the teaching stall takes back an item it shared (the
    sale line whose tap taught it was voided: the tap was a slip)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = Field(description="the withdrawal's format (1)")
    item_id: str = Field(pattern=_UUID, description="the shared item's ``item_id``")


class WithdrawalResult(BaseModel):
    """``POST /api/v1/gallery/withdrawals``' answer."""

    id: int = Field(description="the server's number of the shared item")
    status: Literal["withdrawn", "already"]


def make_item(stall_id: str, label: str, rows: np.ndarray, *, model: str, key: Ed25519PrivateKey,
              model_sha256: str | None = None, plu: str | None = None,
              name: str | None = None) -> SharedItemDoc:
    """A signed shared item of ``rows`` (unit exemplars of ``label``)."""
    rows = np.ascontiguousarray(rows, "<f4")
    doc = SharedItemDoc(format=FORMAT, item_id=str(uuid.uuid4()), stall_id=stall_id, label=label,
                        plu=plu, name=name, model=model, model_sha256=model_sha256,
                        dim=rows.shape[1], count=rows.shape[0],
                        embeddings=base64.b64encode(rows.tobytes()).decode("ascii"),
                        taught_at=dt.datetime.now(dt.UTC))
    return doc.model_copy(update={"signature": sign_digest(doc.digest(), key)})


# ---- sending what this stall was taught ---------------------------------------------------

#: What the uploader remembers of its offers (on disk, ``OFFERED_FILE``), to withdraw one: the
#: newest, as voids come soon after.
REMEMBERED = 256
_WITHDRAW = "-withdraw-"


def _rows_key(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, "<f4").tobytes()).hexdigest()


class GalleryUploader(FolderOutbox):
    """Signs each item taught here (``offer``), queues it on disk and uploads it; queues the
    withdrawal of one taken back here (``untaught``) behind it, in the same folder, so that a
    withdrawal never reaches the server before its item."""

    kept = "taught items stay queued in gallery-outbox"

    def __init__(self, data_dir: Path, server_url: str, token: str, *, stall_id: str,
                 key: Ed25519PrivateKey, public_key: str, model: str, model_sha256: str | None = None,
                 describe: Callable[[str], tuple[str | None, str | None]] | None = None,
                 poll_s: float = 30.0, max_backoff_s: float = 60.0, timeout_s: float = 10.0,
                 stop_event: threading.Event | None = None) -> None:
        super().__init__(f"gallery-up-{stall_id}", data_dir / OUTBOX_DIR, "/api/v1/gallery", server_url,
                         token, poll_s=poll_s, max_backoff_s=max_backoff_s, timeout_s=timeout_s,
                         stop_event=stop_event)
        self.stall_id, self.key, self.public_key = stall_id, key, public_key
        self.model, self.model_sha256 = model, model_sha256
        self.describe = describe
        self._key_registered = False
        # rows -> (item_id, label): a void finds its offer by the rows, a Forget by the label
        self._offered: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self._offered_lock = threading.Lock()
        self._offered_path = data_dir / OFFERED_FILE
        self._load_offered()

    def _load_offered(self) -> None:
        try:
            rows = json.loads(self._offered_path.read_text(encoding="utf-8"))
            # [rows, item_id, label]; a file from before labels were kept has [rows, item_id]
            self._offered = OrderedDict((str(r[0]), (str(r[1]), str(r[2]) if len(r) > 2 else None))
                                        for r in rows)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
            logger.error("%s unreadable (%s): items offered before this start cannot be withdrawn",
                         self._offered_path, exc)

    def _save_offered(self) -> None:
        """(Lock held.)  A failed write costs only a later withdrawal: logged, never raised."""
        try:
            write_atomic(self._offered_path, json.dumps(
                [[k, item_id, label] for k, (item_id, label) in self._offered.items()],
                ensure_ascii=False).encode())
        except OSError as exc:
            logger.error("%s not written (%s): items offered now cannot be withdrawn after a restart",
                         self._offered_path, exc)

    def offer(self, label: str, rows: np.ndarray) -> None:
        """The gallery's taught listener (the recogniser's thread): sign and queue; never raises,
        teaching must not fail because sharing did."""
        try:
            plu, name = self.describe(label) if self.describe is not None else (None, None)
            doc = make_item(self.stall_id, label, rows, model=self.model, key=self.key,
                            model_sha256=self.model_sha256, plu=plu, name=name)
            self.put(doc.item_id, doc.model_dump_json().encode())
        except Exception as exc:  # noqa: BLE001
            logger.error("taught item %s not queued for sharing: %s", label, exc)
            return
        with self._offered_lock:
            self._offered[_rows_key(rows)] = (doc.item_id, label)
            while len(self._offered) > REMEMBERED:
                self._offered.popitem(last=False)
            self._save_offered()
        logger.info("taught item %s queued for the market (%d exemplars)", label, doc.count)
        self.notify()

    def untaught(self, label: str, rows: np.ndarray) -> None:
        """The gallery's untaught listener: withdraw the item these rows were offered as, if this
        stall offered them (an imported item or an older one is nobody's to withdraw here)."""
        with self._offered_lock:
            offer = self._offered.pop(_rows_key(rows), None)
            if offer is not None:
                self._save_offered()
        if offer is not None:
            self._withdraw([offer[0]], label)

    def forgotten(self, label: str) -> None:
        """The gallery's forgotten listener (the vendor's Forget): withdraw every item of
        ``label`` this stall offered and still remembers."""
        with self._offered_lock:
            keys = [k for k, (_, lab) in self._offered.items() if lab == label]
            ids = [self._offered.pop(k)[0] for k in keys]
            if ids:
                self._save_offered()
        self._withdraw(ids, label)

    def _withdraw(self, item_ids: list[str], label: str) -> None:
        """Queue the withdrawals (behind the items, in the same folder); never raises."""
        for item_id in item_ids:
            try:
                self.put(f"{_WITHDRAW[1:]}{item_id}",
                         WithdrawalDoc(format=FORMAT, item_id=item_id).model_dump_json().encode())
            except OSError as exc:
                logger.error("withdrawal of shared item %s (%s) not queued: %s", item_id, label, exc)
                continue
            logger.info("taught item %s (%s) taken back: its withdrawal queued for the market",
                        item_id, label)
        if item_ids:
            self.notify()

    def endpoint_for(self, path: Path) -> str:
        return self.endpoint + "/withdrawals" if _WITHDRAW in path.name else self.endpoint

    def before_send(self) -> None:
        if not self._key_registered:
            register_key(self._client, self.stall_id, self.public_key)
            self._key_registered = True

    def settled(self, path: Path, answer: dict[str, Any]) -> None:
        what = "withdrawn from" if _WITHDRAW in path.name else "shared with"
        logger.info("taught item %s %s the market (%s)", path.stem, what, answer.get("status"))


# ---- taking what other stalls were taught -------------------------------------------------

class SharedGalleryClient(BackoffSender):
    """Pulls the market's shared items of this stall's model and imports them, between baskets."""

    retry_errors = (httpx.HTTPError, OSError)
    kept = "the stall keeps the items it has"

    def __init__(self, data_dir: Path, server_url: str, token: str, *, stall_id: str,
                 gallery: Gallery, may_apply: Callable[[], bool] = lambda: True,
                 interval_s: float = 30.0, max_backoff_s: float = 60.0, timeout_s: float = 10.0,
                 stop_event: threading.Event | None = None) -> None:
        super().__init__(f"gallery-down-{stall_id}", server_url, token, poll_s=interval_s,
                         max_backoff_s=max_backoff_s, timeout_s=timeout_s, stop_event=stop_event)
        self.stall_id, self.gallery, self.may_apply = stall_id, gallery, may_apply
        self.folder = data_dir / IMPORTED_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.state_path = data_dir / STATE_FILE
        self.etag: str | None = None
        #: server id -> why it was refused (each logged once, kept across restarts)
        self.refused: dict[int, str] = {}
        self._load_state()

    @property
    def model(self) -> str:
        return self.gallery.embedding_space

    def imported(self) -> set[int]:
        return {int(p.stem) for p in self.folder.glob("*.json") if p.stem.isdigit()}

    def _load_state(self) -> None:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            if state.get("model") == self.model:  # another model's ETag means nothing now
                self.etag = state.get("etag")
            self.refused = {int(k): str(v) for k, v in state.get("refused", {}).items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            logger.error("%s unreadable (%s): the market's shared items are read again", self.state_path, exc)

    def _save_state(self) -> None:
        state = {"model": self.model, "etag": self.etag,
                 "refused": {str(k): v for k, v in self.refused.items()}}
        write_atomic(self.state_path, json.dumps(state, ensure_ascii=False, indent=1).encode())

    def stop(self, drain_s: float = 2.0) -> None:
        """Stop without a last attempt: nothing waits to be sent."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=drain_s)
        self._client.close()

    def flush_once(self) -> int:
        self.poll_once()
        return 0  # the next pull waits interval_s

    def poll_once(self) -> int:
        """One request; how many items changed the gallery (imported or taken out).

        Raises ``httpx.HTTPError`` when the server cannot be reached or answers an error."""
        if not self.may_apply():
            return 0  # a basket is open: asked again at the next poll
        headers = {"If-None-Match": self.etag} if self.etag else {}
        with self._client.stream("GET", "/api/v1/gallery", params={"model": self.model},
                                 headers=headers) as r:
            if r.status_code == 304:
                return 0
            r.raise_for_status()
            body = bytearray()
            for chunk in r.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    logger.error("shared items answer over %d bytes: ignored", MAX_ANSWER_BYTES)
                    return 0
            etag = r.headers.get("etag")
        try:
            doc = SharedItemsDoc.model_validate_json(bytes(body))
        except ValidationError as exc:
            logger.error("shared items answer refused: %s", exc.errors()[0].get("msg"))
            return 0
        changed = self.apply(doc)
        self.etag = etag if etag and len(etag) <= 200 else None
        self._save_state()
        return changed

    def apply(self, doc: SharedItemsDoc) -> int:
        """Import the new items that pass the checks, take out the withdrawn ones."""
        have = self.imported()
        changed = 0
        for out in doc.items:
            if out.id in have or out.id in self.refused or out.item.stall_id == self.stall_id:
                continue
            why = self._refusal(out)
            if why is None:
                item = out.item
                try:
                    self.gallery.import_arrays(item.model, [item.label] * item.count, item.rows(),
                                               source=f"shared item {out.id} of stall {item.stall_id}")
                except Exception as exc:  # noqa: BLE001 - model.GalleryError and what a hostile item provokes
                    why = str(exc)
            if why is not None:
                self.refused[out.id] = why
                logger.error("shared item %d (%s from stall %s) refused, never imported: %s", out.id,
                             out.item.label, out.item.stall_id, why)
                continue
            write_atomic(self.folder / f"{out.id}.json", out.model_dump_json().encode())
            changed += 1
            logger.info("shared item %d imported: %s (PLU %s) taught at stall %s", out.id,
                        out.item.label, out.item.plu, out.item.stall_id)
        for gone in set(doc.withdrawn) & have:
            changed += self._take_out(gone)
        if changed:
            self.gallery.save()
        return changed

    def _refusal(self, out: SharedItemOut) -> str | None:
        item = out.item
        if item.model != self.model:
            return (f"taught with another model ({item.model}), this stall's is {self.model}")
        if item.dim != self.gallery.dim:
            return f"embeddings of size {item.dim}, this model's are {self.gallery.dim}"
        if not item.verifies(out.public_key):
            return f"its signature does not verify with stall {item.stall_id}'s registered key"
        return None

    def _take_out(self, shared_id: int) -> int:
        path = self.folder / f"{shared_id}.json"
        try:
            out = SharedItemOut.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            logger.error("withdrawn shared item %d: its copy %s unreadable (%s)", shared_id, path, exc)
            return 0
        removed = self.gallery.remove_exemplars(out.item.label, out.item.rows())
        path.unlink()
        logger.info("shared item %d (%s) withdrawn by the market: %d exemplars taken out", shared_id,
                    out.item.label, removed)
        return 1


# ---- the stall's wiring -------------------------------------------------------------------

class SessionLike(Protocol):
    """``edge.session.Session`` as sharing uses it: what a label sells as, and whether a basket
    is open (shared items are imported between baskets only)."""

    @property
    def catalogue(self) -> Catalogue: ...

    @property
    def lines(self) -> list[Any]: ...

    def item_for_label(self, label: str) -> Plu | None: ...


def start_sharing(cfg: StallConfig, recognizer: object, key: Ed25519PrivateKey, public_key: str,
                  session: SessionLike, stop_event: threading.Event) -> list[Callable[[], None]]:
    """Start what ``[gallery]`` asks for; the stop functions of what was started."""
    from model.recognizer import Recognizer

    want = cfg.gallery
    if not (want.share or want.accept):
        return []
    if not cfg.server.token:
        logger.warning("[gallery] share/accept need [server] token: taught items stay at this stall")
        return []
    if not isinstance(recognizer, Recognizer):
        logger.warning("[gallery] share/accept need the recogniser: nothing shared")
        return []
    stops: list[Callable[[], None]] = []
    gallery = recognizer.gallery
    if want.share:
        def describe(label: str) -> tuple[str | None, str | None]:
            item = session.item_for_label(label)
            if item is None:
                try:
                    item = session.catalogue.get(label)
                except Exception:  # noqa: BLE001 - a label that is no PLU here
                    return None, None
            return item.code, item.name_zh

        sha = recognizer.meta.raw.get("onnx_sha256")
        up = GalleryUploader(cfg.data_dir, cfg.server.url, cfg.server.token, stall_id=cfg.stall_id,
                             key=key, public_key=public_key, model=gallery.embedding_space,
                             model_sha256=sha if isinstance(sha, str) else None, describe=describe,
                             stop_event=stop_event)
        gallery.add_taught_listener(up.offer)
        gallery.add_untaught_listener(up.untaught)
        gallery.add_forgotten_listener(up.forgotten)
        up.start()
        stops.append(up.stop)
    if want.accept:
        down = SharedGalleryClient(cfg.data_dir, cfg.server.url, cfg.server.token, stall_id=cfg.stall_id,
                                   gallery=gallery, may_apply=lambda: not session.lines,
                                   interval_s=want.interval_s, stop_event=stop_event)
        down.start()
        stops.append(down.stop)
    return stops
