"""Shared taught items on the market server (issue 18 item 4): a stall uploads its own, signed;
the other stalls of the same model read them with the sender's key; a manager withdraws one.
A real server on 127.0.0.1, SQLite and PostgreSQL."""

from __future__ import annotations

import base64

import numpy as np

from edge.gallery_share import BODY_LIMIT, SharedItemDoc, SharedItemsDoc, make_item
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, StallSim, register_stall

MODEL = "efficientnet-lite0-224-distill-a9c85a47961c-s0"
DIM = 1280


def _rows(seed: int, n: int = 4, dim: int = DIM) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _item(sim: StallSim, label: str = "2003", seed: int = 1, dim: int = DIM, plu: str = "2003",
          name: str = "荸荠") -> SharedItemDoc:
    return make_item(sim.stall_id, label, _rows(seed, dim=dim), model=MODEL, key=sim.key, plu=plu,
                     name=name)


def _post(srv: LiveServer, token: str, item: SharedItemDoc | dict[str, object]):  # type: ignore[no-untyped-def]
    body = item.model_dump(mode="json") if isinstance(item, SharedItemDoc) else item
    with srv.client(token) as c:
        return c.post("/api/v1/gallery", json=body)


def _stalls(srv: LiveServer, *ids: str) -> tuple[list[StallSim], list[str]]:
    sims = [StallSim(i) for i in ids]
    return sims, [register_stall(srv, s, name=f"摊位{s.stall_id}") for s in sims]


def test_an_item_shared_by_one_stall_is_handed_to_the_others_of_its_model(server: LiveServer) -> None:
    (a, b, c), (ta, tb, tc) = _stalls(server, "S01", "S02", "S03")
    item = _item(a)
    r = _post(server, ta, item)
    assert (r.status_code, r.json()["status"]) == (201, "accepted"), r.text
    first_id = r.json()["id"]
    again = _post(server, ta, item)  # the answer was lost: sent again
    assert (again.status_code, again.json()) == (200, {"id": first_id, "status": "duplicate"})

    with server.client(tb) as cb:
        got = cb.get("/api/v1/gallery", params={"model": MODEL})
        assert got.status_code == 200, got.text
        doc = SharedItemsDoc.model_validate_json(got.content)
        assert [(o.id, o.item.label, o.item.stall_id) for o in doc.items] == [(first_id, "2003", "S01")]
        out = doc.items[0]
        assert out.public_key == a.public_key and out.item.verifies(out.public_key)
        assert out.item == item  # as signed, bit for bit
        np.testing.assert_array_equal(out.item.rows(), _rows(1))
        tag = got.headers["etag"]
        assert cb.get("/api/v1/gallery", params={"model": MODEL},
                      headers={"If-None-Match": tag}).status_code == 304
        # another model's stalls get nothing; the sharing stall does not get its own back
        assert cb.get("/api/v1/gallery", params={"model": "other-model-s0"}).json()["items"] == []
    with server.client(ta) as ca:
        assert ca.get("/api/v1/gallery", params={"model": MODEL}).json()["items"] == []

    second = _post(server, tc, _item(c, label="Tomato", seed=2, plu="1001", name="西红柿"))
    assert second.status_code == 201, second.text
    with server.client(tb) as cb:
        changed = cb.get("/api/v1/gallery", params={"model": MODEL}, headers={"If-None-Match": tag})
        assert changed.status_code == 200 and changed.headers["etag"] != tag
        assert [o.item.label for o in SharedItemsDoc.model_validate_json(changed.content).items] == [
            "2003", "Tomato"]


def test_forged_foreign_and_unkeyed_items_are_refused_with_the_reason(server: LiveServer) -> None:
    (a, b), (ta, tb) = _stalls(server, "S01", "S02")
    # signed by a key that is not the one S01 registered
    forger = StallSim("S01")
    r = _post(server, ta, _item(forger))
    assert r.status_code == 403 and "does not verify with stall S01's registered" in r.json()["detail"]
    # a signed item altered on the way (the label changed after signing)
    altered = _item(a).model_dump(mode="json") | {"label": "1001"}
    r = _post(server, ta, altered)
    assert r.status_code == 403 and "signature" in r.json()["detail"]
    # S02's item (properly signed by S02) sent with S01's token
    r = _post(server, ta, _item(b))
    assert r.status_code == 403 and "only its own" in r.json()["detail"]
    # a stall that never registered its key
    with server.client(ADMIN) as c:
        t3 = c.post("/api/v1/stalls", json={"stall_id": "S03", "name": "丙"}).json()["token"]
    r = _post(server, t3, _item(StallSim("S03")))
    assert r.status_code == 409 and "no signing key" in r.json()["detail"]
    # the model's name with another embedding size: another model
    assert _post(server, ta, _item(a)).status_code == 201
    r = _post(server, tb, _item(b, dim=512))
    assert r.status_code == 409 and "size 1280" in r.json()["detail"]
    # embeddings that are not count x dim float32
    bad = _item(a).model_dump(mode="json") | {"embeddings": base64.b64encode(b"\0" * 12).decode()}
    assert _post(server, ta, bad).status_code == 422
    # larger than the route takes
    huge = _item(a).model_dump(mode="json") | {"name": "x" * BODY_LIMIT}
    assert _post(server, ta, huge).status_code == 413
    with server.client() as c:
        assert c.post("/api/v1/gallery", json=_item(a).model_dump(mode="json")).status_code == 401
    with server.client(tb) as cb:
        assert [o.item.stall_id for o in
                SharedItemsDoc.model_validate_json(cb.get("/api/v1/gallery", params={"model": MODEL})
                                                   .content).items] == ["S01"]


def test_a_manager_withdraws_a_shared_item(server: LiveServer) -> None:
    (a, b), (ta, tb) = _stalls(server, "S01", "S02")
    kept = _post(server, ta, _item(a, seed=1)).json()["id"]
    gone = _post(server, ta, _item(a, label="Tomato", seed=2)).json()["id"]
    with server.client(tb) as cb:
        tag = cb.get("/api/v1/gallery", params={"model": MODEL}).headers["etag"]
        assert cb.delete(f"/api/v1/gallery/{gone}").status_code == 401  # not a stall's to do
    with server.client(ADMIN) as c:
        r = c.delete(f"/api/v1/gallery/{gone}")
        assert r.status_code == 200, r.text
        assert r.json()["withdrawn_by"] == "admin" and r.json()["withdrawn_at"]
        assert c.delete("/api/v1/gallery/999").status_code == 404
        listed = c.get("/api/v1/gallery/all").json()
        assert [(x["id"], x["withdrawn_by"]) for x in listed] == [(gone, "admin"), (kept, None)]
    with server.client(tb) as cb:
        r = cb.get("/api/v1/gallery", params={"model": MODEL}, headers={"If-None-Match": tag})
        assert r.status_code == 200
        doc = SharedItemsDoc.model_validate_json(r.content)
        assert [o.id for o in doc.items] == [kept] and doc.withdrawn == [gone]


def test_a_stall_withdraws_its_own_shared_item_and_no_other(server: LiveServer) -> None:
    (a, b), (ta, tb) = _stalls(server, "S01", "S02")
    item = _item(a, seed=3)
    shared = _post(server, ta, item).json()["id"]
    body = {"format": 1, "item_id": item.item_id}
    with server.client(tb) as cb:
        tag = cb.get("/api/v1/gallery", params={"model": MODEL}).headers["etag"]
        r = cb.post("/api/v1/gallery/withdrawals", json=body)
        assert r.status_code == 404 and "stall S02 shared no item" in r.json()["detail"]  # A's item
    with server.client(ta) as ca:
        r = ca.post("/api/v1/gallery/withdrawals", json=body)
        assert r.status_code == 200 and r.json() == {"id": shared, "status": "withdrawn"}, r.text
        assert ca.post("/api/v1/gallery/withdrawals", json=body).json()["status"] == "already"
        for bad in ({"format": 1, "item_id": "not-a-uuid"}, {"item_id": item.item_id},
                    {**body, "extra": 1}):
            assert ca.post("/api/v1/gallery/withdrawals", json=bad).status_code in (400, 422)
        r = ca.post("/api/v1/gallery/withdrawals", content=b"{not json",
                    headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422)
    with server.client() as anon:
        assert anon.post("/api/v1/gallery/withdrawals", json=body).status_code == 401
    with server.client(ADMIN) as c:
        assert [(x["id"], x["withdrawn_by"]) for x in c.get("/api/v1/gallery/all").json()] == [
            (shared, "stall S01")]
    with server.client(tb) as cb:
        r = cb.get("/api/v1/gallery", params={"model": MODEL}, headers={"If-None-Match": tag})
        doc = SharedItemsDoc.model_validate_json(r.content)
        assert r.status_code == 200 and doc.items == [] and doc.withdrawn == [shared]


def test_the_gallery_routes_are_documented(server: LiveServer) -> None:
    with server.client() as c:
        paths = c.get("/openapi.json").json()["paths"]
    post = paths["/api/v1/gallery"]["post"]
    assert post["x-max-body-bytes"] == BODY_LIMIT
    assert {"200", "201", "403", "409", "413"} <= set(post["responses"])
    assert {"200", "304"} <= set(paths["/api/v1/gallery"]["get"]["responses"])
    assert "delete" in paths["/api/v1/gallery/{shared_id}"]
    assert {"200", "404"} <= set(paths["/api/v1/gallery/withdrawals"]["post"]["responses"])
