"""The shopper's phone proven by a one-time code (短信验证码) before her session cookie.

A phone number is the shopper's only account, so whoever types it must show she holds the
phone: ``POST /api/v1/shop/code`` sends a 6-digit code to it, ``POST /api/v1/shop/sign-in``
takes the number and the code.  Nothing is stored: the code's HMAC (the server's secret, the
phone's key, the code, the expiry) rides in a short-lived signed cookie of its own (another
salt than the session's, so it never passes for one), and a wrong or expired code is refused.
Sends per phone and tries per phone are rate-limited (``server.ratelimit``).

How the code reaches the phone is the deployment's (``shop_code_sender``):

* ``command:PROGRAM ARGS...``: the program runs with the phone number as its last argument
  and the message on stdin (an SMS gateway's client, a ``curl`` script); a non-zero exit, or
  no exit within 10 s, is a failed send (503, the shopper is told to try again);
* ``display``: the code is given back in the answer and shown on the page (the demo, the
  tests, a market trying the system out); a warning in the log at the first code a process
  gives out, never the code itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import shlex
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from server import ServerError

logger = logging.getLogger(__name__)

CODE_DIGITS = 6
CODE_TTL_S = 300
SEND_TIMEOUT_S = 10.0
MESSAGE = "【菜市场】您的验证码 {code}，{minutes} 分钟内有效；请勿告诉他人。"


_display_warned = False


class CodeSendFailed(ServerError):
    """The code could not be sent (the gateway's program failed or hung)."""


@dataclass(frozen=True)
class CodeSender:
    """Where a code goes: ``argv`` (a program) or nowhere but the answer (``display``)."""

    argv: tuple[str, ...] = ()

    @property
    def display(self) -> bool:
        return not self.argv

    @classmethod
    def parse(cls, setting: str) -> CodeSender:
        """``display`` or ``command:PROGRAM ARGS...``; ValueError with what is accepted."""
        if setting == "display":
            return cls()
        if setting.startswith("command:"):
            argv = tuple(shlex.split(setting.removeprefix("command:")))
            if argv:
                return cls(argv)
        raise ValueError(f"shop_code_sender {setting!r}: expected 'display' or 'command:PROGRAM ARGS...'")

    def send(self, phone: str, code: str) -> None:
        global _display_warned
        if self.display:
            if not _display_warned:  # once a process, at the first code (never the code itself)
                _display_warned = True
                logger.warning("shop sign-in codes are shown on the shopper's page, not sent "
                               "(shop_code_sender=display): set WETMARKET_SHOP_CODE_SENDER=command:... "
                               "to send them by SMS")
            return
        text = MESSAGE.format(code=code, minutes=CODE_TTL_S // 60)
        try:
            done = subprocess.run([*self.argv, phone], input=text.encode(), capture_output=True,
                                  timeout=SEND_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.error("sending a sign-in code with %s failed: %s", self.argv[0], type(exc).__name__)
            raise CodeSendFailed(str(exc)) from exc
        if done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip().splitlines()[:1]
            logger.error("sending a sign-in code with %s failed: exit %d %s", self.argv[0], done.returncode,
                         why[0][:200] if why else "")
            raise CodeSendFailed(f"exit {done.returncode}")


def _mac(secret: str, phone_key: str, code: str, expires: int) -> str:
    msg = f"shop-code:{phone_key}:{code}:{expires}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def issue(secret: str, phone_key: str, now: float | None = None) -> tuple[str, dict[str, Any]]:
    """A fresh code and what the pending cookie carries (never the code itself)."""
    code = f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"
    expires = int((time.time() if now is None else now) + CODE_TTL_S)
    return code, {"k": phone_key, "e": expires, "h": _mac(secret, phone_key, code, expires)}


def check(secret: str, pending: Any, phone_key: str, code: str, now: float | None = None) -> bool:
    """Whether ``code`` is the one sent to ``phone_key`` and still in time (constant-time)."""
    if not (isinstance(pending, dict) and isinstance(pending.get("e"), int)
            and isinstance(pending.get("h"), str) and pending.get("k") == phone_key):
        return False
    if (time.time() if now is None else now) > pending["e"]:
        return False
    return hmac.compare_digest(pending["h"], _mac(secret, phone_key, code, pending["e"]))
