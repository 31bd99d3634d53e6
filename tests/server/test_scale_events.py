"""Scale audit entries uploaded by the stalls, on SQLite and PostgreSQL: stored once per
(stall, seq), checked against the log's own hash chain, and alerted when a manager must look."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from firmware_bridge.audit import GENESIS, AuditLog, entry_hash
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, StallSim, register_stall
from tests.server.market_rows import alerts


def _log(*events: tuple[str, bool]) -> list[dict[str, Any]]:
    """The entries a real scale log writes for ``events`` (event, bumps the counter)."""
    log = AuditLog()
    for event, bump in events:
        log.record(event, f"{event} detail", bump=bump)  # type: ignore[arg-type]
    return json.loads(json.dumps(log.entries))  # as the file holds them


def _entry(seq: int, counter: int, prev: str, event: str = "zero") -> dict[str, Any]:
    entry: dict[str, Any] = {"seq": seq, "t": round(time.time(), 3), "event": event, "counter": counter,
                             "detail": "by hand", "prev": prev}
    entry["hash"] = entry_hash(entry)
    return entry


def _post(server: LiveServer, token: str, entries: list[Any]) -> dict[str, Any]:
    with server.client(token) as c:
        r = c.post("/api/v1/scale-events", json={"entries": entries})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _keys(server: LiveServer) -> set[str]:
    return {a.key for a in alerts(server, "scale_event")}


def test_a_log_is_stored_once_and_calibrations_and_errors_are_alerted(server: LiveServer) -> None:
    token = register_stall(server, StallSim("S01"))
    other = register_stall(server, StallSim("S02"), "李家蔬菜")
    entries = _log(("zero", False), ("tare", False), ("calibration", True), ("error", False))
    first = _post(server, token, entries)
    assert (first["accepted"], first["duplicates"], first["refused"]) == (4, 0, 0)
    assert [(r["seq"], r["status"], r["flags"]) for r in first["results"]] == [
        (1, "accepted", []), (2, "accepted", []), (3, "accepted", []), (4, "accepted", [])]
    assert _keys(server) == {"scale_event:S01:3", "scale_event:S01:4"}  # the calibration, the error
    # Sent again (a lost answer): duplicates, nothing new.
    again = _post(server, token, entries[::-1])
    assert (again["duplicates"], [r["seq"] for r in again["results"]]) == (4, [4, 3, 2, 1])
    assert len(alerts(server, "scale_event")) == 2
    # Another stall's log has its own numbers.
    assert _post(server, other, _log(("zero", False)))["accepted"] == 1

    with server.client(ADMIN) as c:
        listed = c.get("/api/v1/scale-events", params={"stall_id": "S01"}).json()
        assert [(e["seq"], e["kind"], e["counter"]) for e in listed] == [
            (4, "error", 1), (3, "calibration", 1), (2, "tare", 0), (1, "zero", 0)]
        at = dt.datetime.fromtimestamp(entries[3]["t"], dt.UTC)
        assert listed[0]["at"] == at.astimezone(dt.timezone(dt.timedelta(hours=8))).isoformat()
        assert [e["seq"] for e in c.get("/api/v1/scale-events", params={"kind": "calibration"}).json()] == [3]
        status = {s["stall_id"]: s for s in c.get("/api/v1/scale-events/stalls").json()}
        assert (status["S01"]["uploads"], status["S01"]["last_seq"], status["S01"]["last_counter"]) == (
            True, 4, 1)
        assert status["S02"]["last_seq"] == 1
    register_stall(server, StallSim("S03"), "张记")
    with server.client(ADMIN) as c:
        status = {s["stall_id"]: s for s in c.get("/api/v1/scale-events/stalls").json()}
        assert (status["S03"]["uploads"], status["S03"]["last_seq"]) == (False, None)
    with server.client(token) as c:  # the audit trail is the manager's to read
        assert c.get("/api/v1/scale-events").status_code == 401


def test_missing_altered_foreign_and_replaced_entries_are_flagged_and_alerted(server: LiveServer) -> None:
    token = register_stall(server, StallSim("S01"))
    log = _log(*[("zero", False)] * 6)
    foreign = _log(*[("tare", False)] * 6)  # another scale's log
    assert _post(server, token, log[:2])["accepted"] == 2
    altered = {**log[3], "detail": "zero offset 0 g"}  # edited after it was written: hash kept
    r = _post(server, token, [altered])
    assert r["results"] == [{"seq": 4, "status": "accepted", "reason": None, "flags": ["bad_hash"]}]
    assert {"scale_event:S01:gap:3-3", "scale_event:S01:4"} <= _keys(server)
    # The missing one arrives: it chains to what is stored around it, no flag.
    assert _post(server, token, [log[2], log[4]])["results"][0]["flags"] == []
    # An entry of another log does not follow the stored one before it.
    r = _post(server, token, [foreign[5]])["results"][0]
    assert (r["status"], r["flags"]) == ("accepted", ["chain_mismatch"])
    assert "scale_event:S01:6" in _keys(server)
    # Another entry under a stored number: the log was replaced; refused, alerted.
    r = _post(server, token, [foreign[1]])["results"][0]
    assert r["status"] == "refused" and "replaced or edited" in r["reason"]
    assert "scale_event:S01:replaced:2" in _keys(server)
    # The first entry of a log starts the chain.
    r = _post(server, register_stall(server, StallSim("S02"), "李家蔬菜"), [_entry(1, 0, "f" * 64)])
    assert r["results"][0]["flags"] == ["chain_mismatch"]


def test_the_audit_counter_rises_only_by_a_calibration(server: LiveServer) -> None:
    token = register_stall(server, StallSim("S01"))
    log = _log(("zero", False), ("calibration", True), ("zero", True), ("zero", False))
    # 2: a calibration raising the counter by one is the rule; 3: a zero raising it is not.
    _post(server, token, log)
    keys = _keys(server)
    assert "scale_event:S01:counter:3" in keys and "scale_event:S01:counter:2" not in keys
    jump = _entry(5, 4, log[3]["hash"], event="calibration")  # 1 -> 4: calibrations not in the log
    back = _entry(6, 0, jump["hash"])
    r = _post(server, token, [jump, back])["results"]
    assert [x["flags"] for x in r] == [[], ["counter_back"]]
    assert {"scale_event:S01:counter:5", "scale_event:S01:6"} <= _keys(server)


def test_bad_entries_are_refused_one_by_one(server: LiveServer) -> None:
    token = register_stall(server, StallSim("S01"))
    good = _log(("zero", False), ("tare", False))
    entries: list[Any] = [
        good[0],
        {k: v for k, v in good[1].items() if k != "hash"},
        {**good[1], "seq": 3, "operator": "x"},
        {**good[1], "seq": 4, "t": "yesterday"},
        {**good[1], "seq": 5, "t": 1e12},
        {**good[1], "seq": True},
        {**good[1], "seq": 7, "event": "Zero!"},
        {**good[1], "seq": 8, "prev": "zz"},
        "a line",
        good[1],
    ]
    r = _post(server, token, entries)
    assert [(x["seq"], x["status"]) for x in r["results"]] == [
        (1, "accepted"), (2, "refused"), (3, "refused"), (4, "refused"), (5, "refused"), (None, "refused"),
        (7, "refused"), (8, "refused"), (None, "refused"), (2, "accepted")]
    reasons = [x["reason"] for x in r["results"] if x["status"] == "refused"]
    expected = ["hash: Field required", "operator: Extra inputs", "t: Input should be a valid number",
                "out of range", "seq: Input should be a valid integer", "event: String should match",
                "prev: String should match", "Input should be a valid dictionary"]
    for words, reason in zip(expected, reasons, strict=True):
        assert words in reason, (words, reason)
    assert good[0]["prev"] == GENESIS
    with server.client(token) as c:
        assert c.post("/api/v1/scale-events", json={"entries": []}).status_code == 422
        assert c.post("/api/v1/scale-events", json={"entries": [good[0]] * 501}).status_code == 422
        assert c.post("/api/v1/scale-events", json={"entries": [good[0]], "x": 1}).status_code == 422
    with server.client() as c:
        assert c.post("/api/v1/scale-events", json={"entries": [good[0]]}).status_code == 401
    with server.client(ADMIN) as c:  # a stall uploads its own log; the admin is no stall
        assert c.post("/api/v1/scale-events", json={"entries": [good[0]]}).status_code == 401
