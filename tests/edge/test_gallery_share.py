"""Items taught at one stall offered to the market's other stalls (issue 18 item 4), for real:
a market server on 127.0.0.1 (SQLite; the server's own tests run PostgreSQL too), three
stalls' recognisers (the shipped model) with their galleries on disk, the stalls' sharing
started as ``StallApp`` starts it (``start_sharing``), photos of the grocery-store set.

A teaches (its vendor's correction) -> the item is signed and uploaded -> B (accept) imports it
between baskets and recognises it; C (opted out) never sees it; a forged or another model's
item is refused at the stall, logged once; a withdrawn item leaves B's gallery again."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edge.catalogue import Catalogue, Plu
from edge.config import StallConfig
from edge.gallery_share import (
    OFFERED_FILE,
    OUTBOX_DIR,
    GalleryUploader,
    SharedGalleryClient,
    SharedItemsDoc,
    make_item,
    start_sharing,
)
from edge.integrity import load_or_create_key, public_key_b64
from model.gallery import Gallery
from model.recognizer import Recognizer
from server.app import create_app
from server.settings import Settings
from tests.conftest import DATASET, LiveServer, free_port

ADMIN = "test-admin-token"
KIWI = sorted((DATASET / "train").rglob("Kiwi/*.jpg"))[:3]


def wait_for(cond: Callable[[], object], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return bool(cond())


@dataclass
class Counter:
    """The stall's session as sharing reads it: its catalogue and whether a basket is open."""

    catalogue: Catalogue
    lines: list[Any] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    def item_for_label(self, label: str) -> Plu | None:
        code = self.labels.get(label)
        return self.catalogue.get(code) if code is not None else None


@dataclass
class Stall:
    stall_id: str
    cfg: StallConfig
    recognizer: Recognizer
    counter: Counter
    stops: list[Callable[[], None]]


@pytest.fixture
def market(tmp_path: Path) -> Iterator[LiveServer]:
    if not KIWI:
        pytest.fail(f"the grocery-store photos are missing at {DATASET}")
    app = create_app(Settings(db_url=f"sqlite:///{tmp_path / 'market.db'}", admin_token=ADMIN))
    with LiveServer(app) as srv:
        yield srv


def _catalogue() -> Catalogue:
    return Catalogue([Plu(code="2099", name_zh="猕猴桃", name_en="Kiwi", price_unit="500g",
                          unit_price_fen=800)])


def _token(srv: LiveServer, stall_id: str) -> str:
    """Registered by the manager without a key: the stall registers its own."""
    with srv.client(ADMIN) as c:
        r = c.post("/api/v1/stalls", json={"stall_id": stall_id, "name": f"摊位 {stall_id}"})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _start(tmp_path: Path, srv: LiveServer, stop: threading.Event, stall_id: str, *,
           share: bool = False, accept: bool = False) -> Stall:
    cfg = StallConfig(stall_id=stall_id, name=f"摊位 {stall_id}", data_dir=tmp_path / stall_id,
                      server={"url": srv.url, "token": _token(srv, stall_id)},  # type: ignore[arg-type]
                      gallery={"share": share, "accept": accept, "interval_s": 1})  # type: ignore[arg-type]
    key = load_or_create_key(cfg.data_dir / "stall.key")
    rec = Recognizer.load(gallery_dir=cfg.data_dir / "gallery", background_refit=False)
    counter = Counter(_catalogue())
    stops = start_sharing(cfg, rec, key, public_key_b64(key), counter, stop)
    return Stall(stall_id, cfg, rec, counter, stops)


def _stop(stop: threading.Event, *stalls: Stall) -> None:
    stop.set()
    for s in stalls:
        for fn in reversed(s.stops):
            fn()


def _shared(srv: LiveServer) -> list[dict[str, Any]]:
    with srv.client(ADMIN) as c:
        rows: list[dict[str, Any]] = c.get("/api/v1/gallery/all").json()
        return rows


def test_taught_at_a_is_recognised_at_b_and_never_reaches_c(tmp_path: Path, market: LiveServer) -> None:
    stop = threading.Event()
    a = _start(tmp_path, market, stop, "S01", share=True)
    b = _start(tmp_path, market, stop, "S02", accept=True)
    c = _start(tmp_path, market, stop, "S03")
    try:
        assert len(a.stops) == 1 and len(b.stops) == 1 and c.stops == []  # C opted out: no thread
        b.counter.lines.append("a line of an open basket")
        # The vendor at A corrects three weighings to 猕猴桃 (PLU 2099, no model label): taught
        # under its PLU, as the flow does.
        for photo in KIWI:
            a.recognizer.teach("2099", photo)
        assert wait_for(lambda: len(_shared(market)) == 3)
        rows = _shared(market)
        assert {(r["stall_id"], r["label"], r["plu"], r["name"], r["count"]) for r in rows} == {
            ("S01", "2099", "2099", "猕猴桃", 4)}
        assert wait_for(lambda: not list((a.cfg.data_dir / OUTBOX_DIR).glob("*.json")))

        time.sleep(2.5)  # B's pulls while its basket is open import nothing
        assert "2099" not in b.recognizer.gallery.labels
        b.counter.lines.clear()
        assert wait_for(lambda: b.recognizer.gallery.counts().get("2099") == 12)

        for photo in KIWI:
            at_a, at_b = a.recognizer.recognize(photo), b.recognizer.recognize(photo)
            assert [lab for lab, _ in at_b.top] == [lab for lab, _ in at_a.top]
            np.testing.assert_allclose([p for _, p in at_b.top], [p for _, p in at_a.top], atol=1e-4)
            assert "2099" in dict(at_b.top)
        assert b.recognizer.recognize(KIWI[0]).top[0][0] == "2099"
        assert "2099" not in c.recognizer.gallery.labels
        assert all("2099" not in dict(c.recognizer.recognize(p).top) for p in KIWI)
        # B kept the imports on disk: a restarted B has them without asking again.
        assert Gallery(b.recognizer.gallery.embedding_space, b.recognizer.gallery.dim,
                       b.cfg.data_dir / "gallery").counts() == {"2099": 12}
        # a tap that agreed with the guess (``teach = "taps"``) teaches A and is offered to nobody
        a.recognizer.teach("2099", KIWI[0], offer=False)
        assert a.recognizer.gallery.counts()["2099"] == 16
        time.sleep(1.5)
        assert len(_shared(market)) == 3 and not list((a.cfg.data_dir / OUTBOX_DIR).glob("*.json"))

        # The manager withdraws one: B takes its four exemplars out again, its own stay.
        b.recognizer.teach("Kiwi", KIWI[0])
        with market.client(ADMIN) as m:
            assert m.delete(f"/api/v1/gallery/{rows[0]['id']}").status_code == 200
        assert wait_for(lambda: b.recognizer.gallery.counts().get("2099") == 8)
        assert b.recognizer.gallery.counts()["Kiwi"] == 4
    finally:
        _stop(stop, a, b, c)


def test_a_forged_or_another_models_item_is_refused_at_the_stall_once(
        tmp_path: Path, market: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    a = _start(tmp_path, market, stop, "S01", share=True)
    b = _start(tmp_path, market, stop, "S02")  # its client driven by hand below
    try:
        a.recognizer.teach("2099", KIWI[0])
        assert wait_for(lambda: len(_shared(market)) == 1)
        # Another model's item, uploaded by A under that model's name.
        key = load_or_create_key(a.cfg.data_dir / "stall.key")
        rows = np.eye(4, 1280, dtype=np.float32)
        other = make_item("S01", "2099", rows, model="mobilenet-v3-other-s0", key=key)
        with market.client(a.cfg.server.token) as ca:
            assert ca.post("/api/v1/gallery", json=other.model_dump(mode="json")).status_code == 201
        client = SharedGalleryClient(b.cfg.data_dir, market.url, b.cfg.server.token, stall_id="S02",
                                     gallery=b.recognizer.gallery)
        with market.client(b.cfg.server.token) as cb:
            mine = SharedItemsDoc.model_validate_json(
                cb.get("/api/v1/gallery", params={"model": client.model}).content)
            theirs = SharedItemsDoc.model_validate_json(
                cb.get("/api/v1/gallery", params={"model": other.model}).content)
        assert len(mine.items) == 1 and len(theirs.items) == 1
        genuine = mine.items[0]
        # What a hostile network could make of the server's answer: the label changed after
        # signing, and an item passed off with another stall's key.
        relabelled = genuine.model_copy(update={"id": 101, "item": genuine.item.model_copy(
            update={"label": "Kiwi"})})
        rekeyed = genuine.model_copy(update={"id": 102, "public_key": public_key_b64(
            load_or_create_key(tmp_path / "intruder.key"))})
        hostile = SharedItemsDoc(format=1, model=client.model, withdrawn=[],
                                 items=[relabelled, rekeyed, theirs.items[0]])
        caplog.set_level(logging.ERROR, logger="edge.gallery_share")
        assert client.apply(hostile) == 0
        assert client.apply(hostile) == 0  # again: nothing new logged
        refusals = [r.getMessage() for r in caplog.records if "refused, never imported" in r.getMessage()]
        assert len(refusals) == 3, refusals
        assert sum("signature does not verify" in m for m in refusals) == 2
        assert sum("another model (mobilenet-v3-other-s0)" in m for m in refusals) == 1
        assert len(b.recognizer.gallery) == 0
        # The genuine item still comes in; a restarted stall remembers what it refused.
        assert client.poll_once() == 1 and b.recognizer.gallery.counts() == {"2099": 4}
        client.stop()
        caplog.clear()
        again = SharedGalleryClient(b.cfg.data_dir, market.url, b.cfg.server.token, stall_id="S02",
                                    gallery=b.recognizer.gallery)
        assert again.apply(hostile) == 0 and not caplog.records
        assert again.poll_once() == 0  # 304: unchanged
        again.stop()
    finally:
        _stop(stop, a, b)


def _uploaders(tmp_path: Path, market: LiveServer, model: str) -> Callable[[str], GalleryUploader]:
    """Stall S01's uploader to a server URL, made as each new process of the stall makes it
    (its key and token on disk, its memory of offers in its data folder)."""
    token = _token(market, "S01")
    key = load_or_create_key(tmp_path / "S01" / "stall.key")
    return lambda url: GalleryUploader(tmp_path / "S01", url, token, stall_id="S01", key=key,
                                       public_key=public_key_b64(key), model=model)


def _restarted(rec: Recognizer, tmp_path: Path) -> Recognizer:
    """S01's recogniser as the stall's next process loads it."""
    rec.gallery.close()
    return Recognizer.load(gallery_dir=tmp_path / "S01" / "gallery", background_refit=False)


def test_taught_items_wait_while_the_server_is_away(tmp_path: Path, market: LiveServer) -> None:
    key = load_or_create_key(tmp_path / "S01" / "stall.key")
    token = _token(market, "S01")
    rec = Recognizer.load(gallery_dir=tmp_path / "S01" / "gallery", background_refit=False)

    def uploader(url: str, k: Any = key) -> GalleryUploader:
        return GalleryUploader(tmp_path / "S01", url, token, stall_id="S01", key=k,
                               public_key=public_key_b64(k), model=rec.gallery.embedding_space,
                               describe=lambda label: ("2099", "猕猴桃"))

    away = uploader(f"http://127.0.0.1:{free_port()}")
    rec.gallery.add_taught_listener(away.offer)
    rec.teach("2099", KIWI[0])  # teaching goes on: the item waits on disk
    assert len(away.pending()) == 1
    with pytest.raises(httpx.ConnectError):
        away.flush_once()
    assert len(away.pending()) == 1
    away.stop(drain_s=0)
    back = uploader(market.url)  # the stall restarted, the server is back
    assert back.flush_once() == 1 and back.pending() == []
    assert [r["label"] for r in _shared(market)] == ["2099"]
    back.stop(drain_s=0)
    # An item signed with a key that is not the stall's registered one: refused, set aside,
    # not sent again and again.
    wrong = uploader(market.url, load_or_create_key(tmp_path / "other.key"))
    wrong.offer("2099", np.eye(4, rec.gallery.dim, dtype=np.float32))
    assert wrong.flush_once() == 1 and wrong.pending() == []
    assert len(list((tmp_path / "S01" / OUTBOX_DIR).glob("*.refused"))) == 1
    assert len(_shared(market)) == 1
    wrong.stop(drain_s=0)


def test_a_restarted_stall_withdraws_what_it_offered_before_the_restart(
        tmp_path: Path, market: LiveServer) -> None:
    """A correction taught and offered, the stall restarted (its basket restored from disk), then
    the line voided: the photo is found by its line's tag and the market is told to withdraw it,
    though nothing in the new process offered it."""
    rec = Recognizer.load(gallery_dir=tmp_path / "S01" / "gallery", background_refit=False)
    uploader = _uploaders(tmp_path, market, rec.gallery.embedding_space)
    up = uploader(f"http://127.0.0.1:{free_port()}")  # the market away: the item waits on disk
    rec.gallery.add_taught_listener(up.offer)
    rec.teach("2099", KIWI[0], tag="basket-1/2")
    up.stop(drain_s=0)
    rec = _restarted(rec, tmp_path)
    back = uploader(market.url)
    rec.gallery.add_untaught_listener(back.untaught)
    try:
        assert rec.taught_under("basket-1/2") == "2099"
        assert rec.forget_tagged("basket-1/2") == ("2099", 4)
        assert rec.gallery.counts() == {}
        queued = [p.name for p in back.pending()]
        assert len(queued) == 2 and "-withdraw-" in queued[1]
        assert [back.flush_once() for _ in range(2)] == [1, 1] and back.pending() == []
        assert [r["withdrawn_by"] for r in _shared(market)] == ["stall S01"]
        # a memory file that cannot be read costs later withdrawals, not the stall's start
        (tmp_path / "S01" / OFFERED_FILE).write_text("{garbled", encoding="utf-8")
        again = uploader(market.url)
        again.untaught("2099", np.ones((4, 8), np.float32))
        assert again.pending() == []
        again.stop(drain_s=0)
    finally:
        back.stop(drain_s=0)


def test_forgetting_an_item_withdraws_every_offer_of_it_and_only_of_it(
        tmp_path: Path, market: LiveServer) -> None:
    """The vendor's Forget (``Recognizer.forget_label``) disowns what the stall was taught of
    the item: every photo of it the stall offered is withdrawn from the market, after a restart
    too; another item's offer stays, and a memory file written before labels were kept still
    serves voids."""
    rec = Recognizer.load(gallery_dir=tmp_path / "S01" / "gallery", background_refit=False)
    uploader = _uploaders(tmp_path, market, rec.gallery.embedding_space)
    up = uploader(market.url)
    rec.gallery.add_taught_listener(up.offer)
    rec.teach("2099", KIWI[0])
    other = rec.teach("2100", KIWI[1])
    rec.teach("2099", KIWI[2])
    assert [up.flush_once() for _ in range(3)] == [1, 1, 1]
    up.stop(drain_s=0)
    rec = _restarted(rec, tmp_path)
    back = uploader(market.url)
    rec.gallery.add_forgotten_listener(back.forgotten)
    try:
        assert rec.forget_label("2099") == 8
        assert rec.gallery.counts() == {"2100": 4}
        assert len(back.pending()) == 2
        assert [back.flush_once() for _ in range(2)] == [1, 1] and back.pending() == []
        shared = sorted(_shared(market), key=lambda r: r["id"])
        assert [(r["label"], r["withdrawn_by"]) for r in shared] == [
            ("2099", "stall S01"), ("2100", None), ("2099", "stall S01")]
        rec.forget_label("2099")  # nothing left to withdraw
        assert back.pending() == []
    finally:
        back.stop(drain_s=0)

    # the memory as an older stall wrote it, [rows, item_id]: read, and a void still withdraws
    memory = tmp_path / "S01" / OFFERED_FILE
    kept = json.loads(memory.read_text(encoding="utf-8"))
    assert [r[2] for r in kept] == ["2100"]
    memory.write_text(json.dumps([r[:2] for r in kept]), encoding="utf-8")
    old = uploader(market.url)
    try:
        old.forgotten("2100")  # no label kept: not withdrawn by a Forget
        assert old.pending() == []
        old.untaught("2100", other)
        assert old.flush_once() == 1
        assert [r["withdrawn_by"] for r in sorted(_shared(market), key=lambda r: r["id"])] == [
            "stall S01", "stall S01", "stall S01"]
    finally:
        old.stop(drain_s=0)


def test_a_voided_tap_withdraws_what_it_shared_after_the_item_and_only_its_own(
        tmp_path: Path, market: LiveServer) -> None:
    """The vendor at A corrects a weighing to 猕猴桃 by a slip and voids the line: the stall takes the
    photo back (``Recognizer.forget``) and withdraws the item it shared, queued behind the item so
    that a server away meanwhile gets both in order; B, which imported it, takes it out."""
    stop = threading.Event()
    token = _token(market, "S01")
    key = load_or_create_key(tmp_path / "S01" / "stall.key")
    rec = Recognizer.load(gallery_dir=tmp_path / "S01" / "gallery", background_refit=False)
    b = _start(tmp_path, market, stop, "S02", accept=True)
    up = GalleryUploader(tmp_path / "S01", f"http://127.0.0.1:{free_port()}", token, stall_id="S01",
                         key=key, public_key=public_key_b64(key), model=rec.gallery.embedding_space,
                         describe=lambda label: ("2099", "猕猴桃"))
    rec.gallery.add_taught_listener(up.offer)
    rec.gallery.add_untaught_listener(up.untaught)
    try:
        kept = rec.teach("2099", KIWI[1])
        slip = rec.teach("2099", KIWI[0])
        assert rec.forget("2099", slip) == 4  # the server away: item and withdrawal both wait
        assert rec.gallery.counts() == {"2099": 4}
        queued = [p.name for p in up.pending()]
        assert len(queued) == 3 and "-withdraw-" in queued[2] and "-withdraw-" not in queued[1]
        with pytest.raises(httpx.ConnectError):
            up.flush_once()
        up.stop(drain_s=0)
        back = GalleryUploader(tmp_path / "S01", market.url, token, stall_id="S01", key=key,
                               public_key=public_key_b64(key), model=rec.gallery.embedding_space)
        assert [back.flush_once() for _ in range(3)] == [1, 1, 1] and back.pending() == []
        assert not list((tmp_path / "S01" / OUTBOX_DIR).glob("*.refused"))
        rows = sorted(_shared(market), key=lambda r: r["id"])
        assert [(r["label"], r["withdrawn_by"]) for r in rows] == [("2099", None), ("2099", "stall S01")]
        back.stop(drain_s=0)
        # B keeps the item the vendor meant and never keeps the slip
        assert wait_for(lambda: b.recognizer.gallery.counts() == {"2099": 4})
        np.testing.assert_allclose(np.sort(b.recognizer.gallery.snapshot()[0], axis=0),
                                   np.sort(kept, axis=0), atol=1e-6)
        # what A takes back of an item it did not offer (an import) withdraws nothing
        other = GalleryUploader(tmp_path / "S01b", market.url, token, stall_id="S01", key=key,
                                public_key=public_key_b64(key), model=rec.gallery.embedding_space)
        other.untaught("2099", kept)
        assert other.pending() == []
        other.stop(drain_s=0)
    finally:
        _stop(stop, b)
