"""The shopper's phone proven by a one-time code before her session (server/shop_codes.py),
on a live server: the code sent by the market's program, tried, expired, rate-limited."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from server import shop_codes
from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN

PHONE = "13800138000"


def _gateway(tmp_path: Path, exit_code: int = 0) -> Path:
    """A stand-in for an SMS gateway's client: appends its argument and stdin to a file."""
    script = tmp_path / "send-sms"
    script.write_text(f"#!{sys.executable}\n"
                      "import json, sys\n"
                      f"with open({str(tmp_path / 'sent.jsonl')!r}, 'a') as f:\n"
                      "    f.write(json.dumps({'to': sys.argv[-1], 'text': sys.stdin.read()}) + '\\n')\n"
                      f"sys.exit({exit_code})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def _sent(tmp_path: Path) -> list[dict[str, str]]:
    path = tmp_path / "sent.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_the_code_goes_to_the_phone_and_only_it_signs_in(tmp_path: Path) -> None:
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token=ADMIN,
                        shop_code_sender=f"command:{_gateway(tmp_path)} --market 310106-001")
    with LiveServer(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        r = c.post("/api/v1/shop/code", json={"phone": "138 0013 8000"})
        assert r.status_code == 200, r.text
        assert r.json() == {"phone": "138****8000", "expires_s": 300, "shown_code": None}  # sent, not shown
        [sms] = _sent(tmp_path)
        assert sms["to"] == PHONE and "验证码" in sms["text"]
        code = sms["text"].split("验证码 ")[1][:6]
        assert code.isdigit() and code not in r.text and code not in str(r.headers)
        # the pending cookie is not a session: nothing of hers is open yet
        assert c.get("/api/v1/shop/me").status_code == 401
        pending = c.cookies["wm_shop_code"]
        bad = httpx.get(f"{srv.url}/api/v1/shop/me", cookies={"wm_shop": pending})
        assert bad.status_code == 401

        wrong = f"{(int(code) + 1) % 10**6:06d}"
        r = c.post("/api/v1/shop/sign-in", json={"phone": PHONE, "code": wrong})
        assert r.status_code == 401 and "验证码不对" in r.json()["detail"]
        # her code with another number, or without the cookie the code was sent with: refused
        assert c.post("/api/v1/shop/sign-in", json={"phone": "13900139000", "code": code}).status_code == 401
        alone = httpx.post(f"{srv.url}/api/v1/shop/sign-in", json={"phone": PHONE, "code": code})
        assert alone.status_code == 401 and "set-cookie" not in alone.headers
        r = c.post("/api/v1/shop/sign-in", json={"phone": PHONE, "code": code})
        assert r.status_code == 200 and r.json() == {"phone": "138****8000"}
        assert c.get("/api/v1/shop/me").json() == {"phone": "138****8000"}
        assert "wm_shop_code" not in c.cookies  # used: dropped

        # no code in the log line of a refusal, no malformed body accepted
        for body in ({"phone": PHONE}, {"phone": PHONE, "code": "12345"}, {"phone": PHONE, "code": "abcdef"},
                     {"phone": PHONE, "code": "123456", "extra": 1}):
            assert c.post("/api/v1/shop/sign-in", json=body).status_code == 422, body


def test_codes_sent_and_tried_are_limited_per_phone(tmp_path: Path) -> None:
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token=ADMIN,
                        shop_code_rate="2/minute", shop_code_tries="3/minute")
    with LiveServer(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        sends = [c.post("/api/v1/shop/code", json={"phone": PHONE}) for _ in range(3)]
        assert [r.status_code for r in sends] == [200, 200, 429]
        assert "太频繁" in sends[2].json()["detail"] and int(sends[2].headers["retry-after"]) >= 1
        code = sends[1].json()["shown_code"]  # display mode: the demo's and trials'
        assert code and code.isdigit() and len(code) == 6
        tries = [c.post("/api/v1/shop/sign-in", json={"phone": PHONE, "code": "000000" if code != "000000"
                                                      else "111111"}).status_code for _ in range(3)]
        assert tries == [401, 401, 401]
        # the fourth try is refused even with the right code: guessing 10^6 codes takes days
        r = c.post("/api/v1/shop/sign-in", json={"phone": PHONE, "code": code})
        assert r.status_code == 429


def test_a_failing_gateway_is_a_clear_503_and_no_cookie(tmp_path: Path) -> None:
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token=ADMIN,
                        shop_code_sender=f"command:{_gateway(tmp_path, exit_code=3)}")
    with LiveServer(create_app(settings)) as srv:
        r = httpx.post(f"{srv.url}/api/v1/shop/code", json={"phone": PHONE}, timeout=10)
        assert r.status_code == 503 and "发送失败" in r.json()["detail"]
        assert "set-cookie" not in r.headers
        missing = Settings(db_url="sqlite://", shop_code_sender=f"command:{tmp_path / 'nowhere'}")
        with pytest.raises(shop_codes.CodeSendFailed):
            shop_codes.CodeSender.parse(missing.shop_code_sender).send(PHONE, "123456")


@pytest.mark.parametrize("setting", ["sms", "command:", "command:   ", "webhook:http://x"])
def test_a_bad_sender_setting_is_refused_with_what_is_accepted(setting: str) -> None:
    with pytest.raises(ValidationError, match="expected 'display' or 'command:PROGRAM"):
        Settings(db_url="sqlite://", shop_code_sender=setting)


def test_a_code_expires_and_is_bound_to_its_phone() -> None:
    code, pending = shop_codes.issue("s3cret", "key-a", now=1000.0)
    assert shop_codes.check("s3cret", pending, "key-a", code, now=1000.0 + shop_codes.CODE_TTL_S)
    assert not shop_codes.check("s3cret", pending, "key-a", code, now=1001.0 + shop_codes.CODE_TTL_S)
    assert not shop_codes.check("s3cret", pending, "key-b", code, now=1000.0)
    assert not shop_codes.check("other", pending, "key-a", code, now=1000.0)
    assert not shop_codes.check("s3cret", {**pending, "e": pending["e"] + 3600}, "key-a", code, now=1000.0)
    assert not shop_codes.check("s3cret", None, "key-a", code, now=1000.0)
    assert code not in json.dumps(pending)
