"""The stall uploads its scale audit log to a real market server: every entry once, across
outages and restarts, remembering what it sent."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from edge.config import StallConfig
from edge.demo_data import catalogue
from edge.scale_upload import ScaleAuditUploader
from edge.stall import StallApp
from firmware_bridge.audit import AuditLog
from server import db
from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer
from tests.edge.test_stall import wait_for
from tests.server.conftest import ADMIN


def stored(srv: LiveServer, stall_id: str = "S01") -> list[tuple[int, str, list[str]]]:
    with srv.app.state.sessionmaker() as session:
        return [(e.seq, e.kind, e.flags) for e in session.execute(
            select(db.ScaleEvent).where(db.ScaleEvent.stall_id == stall_id)
            .order_by(db.ScaleEvent.seq)).scalars()]


def scale_alerts(srv: LiveServer) -> list[str]:
    with srv.app.state.sessionmaker() as session:
        return list(session.execute(select(db.Alert.key).where(db.Alert.kind == "scale_event")
                                    .order_by(db.Alert.id)).scalars())


def same_port(srv: LiveServer) -> LiveServer:
    """A server on ``srv``'s app and port: the market server back after an outage."""
    again = LiveServer(srv.app)
    again.port, again.url = srv.port, srv.url
    again.server.config.port = srv.port
    return again


def register(srv: LiveServer, stall_id: str = "S01") -> str:
    with srv.client(ADMIN) as c:
        r = c.post("/api/v1/stalls", json={"stall_id": stall_id, "name": "王记鲜果"})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def uploader(log: Path, srv: LiveServer, token: str) -> ScaleAuditUploader:
    return ScaleAuditUploader(log, srv.url, token, stall_id="S01", poll_s=0.2, max_backoff_s=0.5,
                              timeout_s=2.0)


@pytest.fixture
def app_db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'market.db'}"


def test_entries_reach_the_server_across_an_outage_and_a_restart(tmp_path: Path, app_db: str) -> None:
    srv = LiveServer(create_app(Settings(db_url=app_db, admin_token=ADMIN)))
    with srv:
        token = register(srv)
    # The server is down: the scale keeps logging, the uploader keeps trying.
    log_path = tmp_path / "scale-audit.jsonl"
    log = AuditLog(log_path)
    log.record("zero", "zero offset 0 g")
    log.record("tare", "tare 120 g")
    up = uploader(log_path, srv, token)
    up.start()
    try:
        assert wait_for(lambda: up.last_error is not None)
        assert up.sent_seq == 0 and not up.online
        with same_port(srv) as back:
            assert wait_for(lambda: up.sent_seq == 2)
            assert stored(back) == [(1, "zero", []), (2, "tare", [])]
            log.record("calibration", "span 15000 g", bump=True)
            log.record("error", "serial line lost")
            assert wait_for(lambda: up.sent_seq == 4)
            assert [s[:2] for s in stored(back)] == [
                (1, "zero"), (2, "tare"), (3, "calibration"), (4, "error")]
            assert {"scale_event:S01:3", "scale_event:S01:4"} <= set(scale_alerts(back))
    finally:
        up.stop()
    assert json.loads((tmp_path / "scale-audit.sent.json").read_text())["seq"] == 4

    # A restart remembers what was sent: only the new entry is pending, and it goes up.
    log.record("zero", "zero offset 5 g")
    restarted = uploader(log_path, srv, token)
    assert [e["seq"] for _, e in restarted.pending()] == [5]
    with same_port(srv) as back:
        restarted.start()
        try:
            assert wait_for(lambda: restarted.sent_seq == 5)
            assert [s[0] for s in stored(back)] == [1, 2, 3, 4, 5]
        finally:
            restarted.stop()


def test_a_lost_state_file_costs_duplicates_and_a_replaced_log_is_refused(
        tmp_path: Path, app_db: str, caplog: pytest.LogCaptureFixture) -> None:
    log_path = tmp_path / "scale-audit.jsonl"
    log = AuditLog(log_path)
    for i in range(3):
        log.record("zero", f"zero {i}")
    with LiveServer(create_app(Settings(db_url=app_db, admin_token=ADMIN))) as srv:
        token = register(srv)
        first = uploader(log_path, srv, token)
        assert first.flush_once() == 3
        first.stop()
        # The state file is garbled: everything is sent again, and answered "duplicate".
        (tmp_path / "scale-audit.sent.json").write_text("{not json")
        with caplog.at_level(logging.ERROR, logger="edge.scale_upload"):
            again = uploader(log_path, srv, token)
        assert "unreadable" in caplog.text and again.sent_seq == 0
        assert again.flush_once() == 3 and again.sent_seq == 3
        again.stop()
        assert [s[0] for s in stored(srv)] == [1, 2, 3]

        # The log is replaced (a new scale, a wiped data folder): its entries differ from
        # the stored ones under the same numbers; the server refuses them and alerts.
        log_path.unlink()
        other = AuditLog(log_path)
        other.record("calibration", "new span", bump=True)
        other.record("zero", "zero 0")
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="edge.scale_upload"):
            replaced = uploader(log_path, srv, token)
            assert replaced.flush_once() == 2
        assert "no longer holds entry 3" in caplog.text
        assert "server refused scale audit entry 1" in caplog.text
        assert [(s[0], s[1]) for s in stored(srv)] == [(1, "zero"), (2, "zero"), (3, "zero")]
        assert {"scale_event:S01:replaced:1", "scale_event:S01:replaced:2"} <= set(scale_alerts(srv))
        replaced.stop()


def test_a_line_being_written_waits_and_a_garbled_line_is_a_gap_on_the_server(
        tmp_path: Path, app_db: str) -> None:
    memory = AuditLog()  # the entries a scale wrote; the file is written by hand below
    for i in range(4):
        memory.record("tare", f"tare {i} g")
    lines = [json.dumps(e, ensure_ascii=False) + "\n" for e in memory.entries]
    log_path = tmp_path / "scale-audit.jsonl"
    log_path.write_text(lines[0] + lines[1] + lines[2][:20])  # entry 3 half written
    with LiveServer(create_app(Settings(db_url=app_db, admin_token=ADMIN))) as srv:
        up = uploader(log_path, srv, register(srv))
        assert [e["seq"] for _, e in up.pending()] == [1, 2]
        assert up.flush_once() == 2
        # The rest of the line never came (a power cut); the scale wrote entry 4 after it.
        with log_path.open("a") as fh:
            fh.write("\n" + lines[3])
        assert [e["seq"] for _, e in up.pending()] == [4]
        assert up.flush_once() == 1 and up.sent_seq == 4
        assert [s[0] for s in stored(srv)] == [1, 2, 4]
        assert "scale_event:S01:gap:3-3" in scale_alerts(srv)
        up.stop()


def test_a_running_stall_uploads_its_scale_audit_log(tmp_path: Path, app_db: str) -> None:
    with LiveServer(create_app(Settings(db_url=app_db, admin_token=ADMIN))) as srv:
        token = register(srv, "S02")
        cfg = StallConfig(stall_id="S02", name="李家蔬菜", data_dir=tmp_path / "S02",
                          catalogue=catalogue("S02", "20261128"), seed=7,
                          server={"url": srv.url, "token": token},  # type: ignore[arg-type]
                          printer={"type": "file"},  # type: ignore[arg-type]
                          screens={"enabled": False})  # type: ignore[arg-type]
        stall = StallApp(cfg)
        stall.start()
        try:
            session = stall.session
            assert session is not None
            assert wait_for(lambda: session.weigh_state.name == "STABLE_ZERO")
            session.weigher.zero()  # the vendor presses 置零: an audit entry
            # The uploader polls the log every 5 s.
            assert wait_for(lambda: any(kind == "zero" for _, kind, _ in stored(srv, "S02")), 30.0)
        finally:
            stall.stop()
        assert (tmp_path / "S02" / "scale-audit.sent.json").exists()
