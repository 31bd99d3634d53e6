"""Manager sessions for ``/manage``: a signed cookie, and CSRF tokens for what changes state.

The cookie (``wm_session``) holds the username, the account's ``session_epoch`` and the
session's CSRF token, signed with ``itsdangerous`` under a secret generated at the
database's first start and kept in ``server_meta`` (every server process on one
database shares it).  It is HttpOnly, SameSite=Lax, Secure when the request came
over https, and expires ``Settings.manage_session_s`` after sign-in (the signature's
timestamp is checked, not only the browser's expiry).  Each request looks the
account up: a disabled account, or one whose epoch moved on (disabled, password
changed, signed out everywhere), is no longer signed in.

CSRF: a request that changes state (anything but GET, HEAD, OPTIONS) authenticated
by the cookie must carry the session's token, as the ``X-CSRF-Token`` header (the
pages' fetch calls) or the form field ``csrf_token`` (the pages' forms), else 403.
The request guard (``server.guard``) checks it before the route runs.  A request
with an ``Authorization`` header is authenticated by that header alone: a browser
never adds one by itself, so it needs no CSRF token, and its cookie is ignored.

The sign-in form has its own token: a random nonce in a short-lived cookie and its
HMAC under the server secret in the form, so a page elsewhere cannot sign a browser
in (to an attacker's account).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request, Response, status
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from server import db
from server.auth import Actor

logger = logging.getLogger(__name__)

COOKIE = "wm_session"
SIGN_IN_COOKIE = "wm_signin"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECRET_KEY = "session_secret"
#: How long a sign-in form stays usable.
SIGN_IN_FORM_S = 3600


def load_secret(maker: sessionmaker[Session]) -> str:
    """The server secret that signs cookies: generated once per database, kept in ``server_meta``."""
    with maker() as session:
        row = session.get(db.Meta, SECRET_KEY)
        if row is not None:
            return row.value
        session.add(db.Meta(key=SECRET_KEY, value=secrets.token_urlsafe(48)))
        try:
            session.commit()
        except IntegrityError:  # another process generated it at the same moment
            session.rollback()
    with maker() as session:
        return session.get_one(db.Meta, SECRET_KEY).value


@dataclass(frozen=True, slots=True)
class SessionData:
    username: str
    epoch: int
    csrf: str


class Signer:
    """Signs and reads session cookies and sign-in form tokens with the server secret."""

    def __init__(self, secret: str, max_age_s: int) -> None:
        self._secret = secret.encode()
        self._cookies = URLSafeTimedSerializer(secret, salt="wetmarket.manage.session")
        self.max_age_s = max_age_s

    def issue(self, manager: db.Manager) -> str:
        return self._cookies.dumps({"u": manager.username, "e": manager.session_epoch,
                                    "c": secrets.token_urlsafe(24)})

    def read(self, value: str) -> SessionData | None:
        try:
            data: Any = self._cookies.loads(value, max_age=self.max_age_s)
        except BadSignature:  # also SignatureExpired
            return None
        if not (isinstance(data, dict) and isinstance(data.get("u"), str)
                and isinstance(data.get("e"), int) and isinstance(data.get("c"), str)):
            return None
        return SessionData(data["u"], data["e"], data["c"])

    def form_token(self, nonce: str) -> str:
        return hmac.new(self._secret, b"sign-in:" + nonce.encode(), hashlib.sha256).hexdigest()


def signer(request: Request) -> Signer:
    value: Signer = request.app.state.session_signer
    return value


def _cookie_args(request: Request) -> dict[str, Any]:
    return {"httponly": True, "samesite": "lax", "secure": request.url.scheme == "https"}


def set_session(response: Response, request: Request, manager: db.Manager) -> None:
    s = signer(request)
    response.set_cookie(COOKIE, s.issue(manager), max_age=s.max_age_s, path="/",
                        **_cookie_args(request))


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/", **_cookie_args(request))


def sign_in_form(request: Request) -> tuple[str, str]:
    """A new sign-in form: the nonce for its cookie, and the token the form sends back."""
    nonce = secrets.token_urlsafe(16)
    return nonce, signer(request).form_token(nonce)


def set_sign_in_cookie(response: Response, request: Request, nonce: str) -> None:
    response.set_cookie(SIGN_IN_COOKIE, nonce, max_age=SIGN_IN_FORM_S, path="/manage/login",
                        **_cookie_args(request))


def sign_in_form_ok(request: Request, token: str | None) -> bool:
    nonce = request.cookies.get(SIGN_IN_COOKIE)
    if not nonce or not token:
        return False
    return hmac.compare_digest(signer(request).form_token(nonce), token)


def _lookup(request: Request, data: SessionData) -> db.Manager | None:
    with request.app.state.sessionmaker() as session:
        manager = session.get(db.Manager, data.username)
    if manager is None or manager.disabled or manager.session_epoch != data.epoch:
        return None
    return manager


async def _sent_csrf(request: Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header is not None:
        return header
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        value = (await request.form()).get(CSRF_FIELD)  # kept on the request for the route
        return value if isinstance(value, str) else None
    return None


async def sign_in_by_cookie(request: Request) -> Actor | None:
    """The manager the session cookie names, set as ``request.state.manager`` (which
    ``server.auth.require_manager`` accepts); None without a valid session.

    A request that changes state must carry the session's CSRF token: 403 otherwise.
    The form it may be read from is bounded by the route's body limit (the guard's).
    """
    if "authorization" in request.headers:
        return None
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    data = signer(request).read(value)
    if data is None:
        return None
    manager = await run_in_threadpool(_lookup, request, data)
    if manager is None:
        return None
    if request.method not in SAFE_METHODS:
        sent = await _sent_csrf(request)
        if sent is None or not hmac.compare_digest(sent.encode(), data.csrf.encode()):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                "CSRF token missing or wrong: reload the page and try again")
    actor = Actor("manager", manager.username)
    request.state.manager = actor
    request.state.manager_name = manager.display_name
    request.state.csrf_token = data.csrf
    return actor
