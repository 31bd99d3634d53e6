"""Bearer tokens: the admin's from settings, each stall's stored as a SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine, bindparam, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from server import db
from server.events import watch_commits

logger = logging.getLogger(__name__)

#: ``Authorization: Bearer ...``; a route that depends on it checks a token, and
#: ``server.guard`` checks that token before the route reads its body.
bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _unauthorized(msg: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, msg, headers={"WWW-Authenticate": "Bearer"})


def admin_token_sha256(sessionmaker, configured: str | None) -> tuple[str, str | None]:
    """The admin token's hash, and the token itself when it was generated just now.

    A configured token wins.  Otherwise the first start of a database generates
    one, keeps only its hash, and hands the token back to be printed once.
    """
    if configured:
        return token_hash(configured), None
    with sessionmaker() as session:
        row = session.get(db.Meta, "admin_token_sha256")
        if row is not None:
            return row.value, None
        token = new_token()
        session.add(db.Meta(key="admin_token_sha256", value=token_hash(token)))
        session.commit()
        return token_hash(token), token


def require_admin(request: Request, cred: Credentials) -> None:
    if cred is None:
        raise _unauthorized("admin bearer token required")
    if not hmac.compare_digest(token_hash(cred.credentials), request.app.state.admin_sha256):
        raise _unauthorized("bad admin token")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who changed something, as every history row records it (``who``)."""

    kind: Literal["admin", "manager", "stall"]
    name: str  # a manager's username, a stall's id, or "admin"

    @property
    def who(self) -> str:
        return "admin" if self.kind == "admin" else f"{self.kind}:{self.name}"


def require_manager(request: Request, cred: Credentials) -> Actor:
    """A market manager: signed in to ``/manage`` (``request.state.manager``, set by the
    manager pages' session layer), else the admin token, which bootstraps the first one."""
    signed_in = getattr(request.state, "manager", None)
    if isinstance(signed_in, Actor):
        return signed_in
    if cred is None:
        raise _unauthorized("sign in as a market manager, or send the admin bearer token")
    require_admin(request, cred)
    return Actor("admin", "admin")


ManagerDep = Annotated[Actor, Depends(require_manager)]


def require_stall_or_manager(request: Request, cred: Credentials) -> Actor:
    """A stall by its own token, or a market manager (as ``require_manager``): who may set a
    stall's prices.  The route still checks that a stall touches only its own stall."""
    signed_in = getattr(request.state, "manager", None)
    if isinstance(signed_in, Actor):
        return signed_in
    if cred is None:
        raise _unauthorized("send the stall's bearer token, or sign in as a market manager")
    if hmac.compare_digest(token_hash(cred.credentials), request.app.state.admin_sha256):
        return Actor("admin", "admin")
    with request.app.state.sessionmaker() as session:
        return Actor("stall", stall_for_token(session, cred).stall_id)


StallOrManagerDep = Annotated[Actor, Depends(require_stall_or_manager)]


def require_fair_scale(request: Request, cred: Credentials) -> None:
    """The market's fair scale (公平秤) by the token a manager issued it
    (``PUT /api/v1/fair-scale/token``, ``server.meta_token``)."""
    from server.meta_token import FAIR_SCALE  # it imports this module

    if cred is None:
        raise _unauthorized("the fair scale's bearer token required")
    with request.app.state.sessionmaker() as session:
        if not FAIR_SCALE.matches(session, cred.credentials):
            raise _unauthorized("unknown fair-scale token")


def stall_for_token(session: Session, cred: HTTPAuthorizationCredentials | None) -> db.Stall:
    if cred is None:
        raise _unauthorized("stall bearer token required")
    stall = session.execute(
        select(db.Stall).where(db.Stall.token_sha256 == token_hash(cred.credentials))
    ).scalar_one_or_none()
    if stall is None:
        raise _unauthorized("unknown stall token")
    return stall


@dataclass(frozen=True, slots=True)
class StallAuth:
    """A stall as its bearer token names it: what an upload needs of it (``server.ingest``)."""

    stall_id: str
    public_key: str | None


_STALL_BY_TOKEN = select(db.Stall.stall_id, db.Stall.public_key).where(
    db.Stall.token_sha256 == bindparam("token_sha256"))


def stall_by_token(engine: Engine, cred: HTTPAuthorizationCredentials | None) -> StallAuth:
    """``stall_for_token`` for a request that only reads the stall: one indexed read on a
    connection of the primary, without an ORM session and object (130 against 350 us of CPU
    here, on every upload and feed request of every stall)."""
    if cred is None:
        raise _unauthorized("stall bearer token required")
    return _stall_by_sha256(engine, token_hash(cred.credentials))


def _stall_by_sha256(engine: Engine, sha256: str) -> StallAuth:
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # One statement needs no transaction: without one, psycopg sends no BEGIN before
            # it and no ROLLBACK after it (two round trips of this request's four).
            conn.execution_options(isolation_level="AUTOCOMMIT")
        row = conn.execute(_STALL_BY_TOKEN, {"token_sha256": sha256}).first()
    if row is None:
        raise _unauthorized("unknown stall token")
    return StallAuth(row[0], row[1])


#: PostgreSQL's channel for "a stall's token or key changed": every server process on the
#: database forgets the stalls it knew by their tokens (:class:`StallTokens`).
STALLS_CHANNEL = "wetmarket_stalls"


class StallTokens:
    """The stalls this process has lately found by their bearer tokens (``check_token``).

    A stall's upload or feed request whose token is known here is let through without a
    thread hop and a database read: that read was 9 % of the server's GIL time under
    single-sale uploads, and on PostgreSQL a round trip and a statement of its backend's.
    Only tokens that named a stall are kept, so an unknown token costs the read every time
    and fills nothing.

    A stall's token is replaced (``server.stalls.rotate_token``) or its key set in some server
    process's session: :func:`watch_stall_changes` makes the commit forget every known token
    in this process and, through PostgreSQL's ``NOTIFY`` sent in that very transaction, in
    every other one (and a listener that lost its connection forgets them on coming back, as
    it may have missed a notice).  So an old token stops working with the commit here and a
    notice's delivery later elsewhere.  ``ttl_s`` bounds a change made to the database behind
    the servers' backs (an operator's ``UPDATE``).

    A look-up that began before a change may end after it: each one notes the
    :attr:`generation` it began in, and what it found is kept only if nothing was forgotten
    meanwhile.  With ``trusting=False`` (PostgreSQL, until the listener listens) nothing is
    kept: :meth:`trust` follows the listener (``server.events.PgListener``).
    """

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic, *,
                 trusting: bool = True) -> None:
        self._ttl = ttl_s
        self._clock = clock
        self._known: dict[str, tuple[StallAuth, float]] = {}
        self._generation = 0
        self._trusting = trusting
        self._lock = threading.Lock()

    @property
    def generation(self) -> int:
        return self._generation

    def get(self, sha256: str) -> StallAuth | None:
        hit = self._known.get(sha256)
        if hit is None:
            return None
        if self._clock() - hit[1] >= self._ttl:
            with self._lock:
                if self._known.get(sha256) is hit:
                    del self._known[sha256]
            return None
        return hit[0]

    def put(self, sha256: str, stall: StallAuth, generation: int) -> None:
        if self._ttl <= 0:
            return
        with self._lock:
            if self._trusting and generation == self._generation:
                self._known[sha256] = (stall, self._clock())

    def forget(self) -> None:
        with self._lock:
            self._generation += 1
            self._known.clear()

    def trust(self, listening: bool) -> None:
        """Keep what look-ups find only while every change is heard of (``listening``);
        forget in either case, as a notice may have been missed in between."""
        with self._lock:
            self._trusting = listening
            self._generation += 1
            self._known.clear()

    def __len__(self) -> int:
        return len(self._known)


def watch_stall_changes(maker: sessionmaker[Session], tokens: StallTokens, *,
                        notify: bool = False) -> None:
    """After each commit, by a session of ``maker``, that added, changed or deleted a stall,
    ``tokens.forget()``; with ``notify`` (PostgreSQL) also ``NOTIFY`` :data:`STALLS_CHANNEL` in
    that transaction, which every server process's listener answers the same way."""

    def collect(obj: object) -> tuple[str, ...]:
        return ("stalls",) if isinstance(obj, db.Stall) else ()

    def committed(_what: set[Any]) -> None:
        tokens.forget()

    def notice(_what: set[Any]) -> tuple[str, str]:
        return STALLS_CHANNEL, json.dumps({"changed": ["stalls"]})

    watch_commits(maker, "stalls_changed", collect, committed, notice if notify else None)


def stalls_noted(tokens: StallTokens) -> Callable[[str], None]:
    """The handler of :data:`STALLS_CHANNEL` notices: whatever they say, forget."""

    def noted(_payload: str) -> None:
        tokens.forget()

    return noted


def known_stall(state: Any, sha256: str) -> StallAuth | None:
    """The stall of a token this process knows (:class:`StallTokens`), counted as the stall's
    contact (silent-stall alerts, ``server.alerts``); None for a token it must look up."""
    tokens: StallTokens = state.stall_tokens
    known = tokens.get(sha256)
    if known is not None:
        state.contacts.seen(known.stall_id)
    return known


async def check_token(request: Request,
                      kind: Literal["admin", "manager", "stall", "stall_or_manager", "fair_scale"]) -> None:
    """The route's own token check (``require_admin``, ``require_manager`` or
    ``stall_for_token``), run before the route reads its body; raises the same 401."""
    cred = await bearer(request)
    if kind == "admin":
        require_admin(request, cred)
        return
    if kind == "manager":
        require_manager(request, cred)
        return
    if kind == "stall_or_manager":
        await run_in_threadpool(require_stall_or_manager, request, cred)
        return
    if kind == "fair_scale":
        await run_in_threadpool(require_fair_scale, request, cred)
        return

    if cred is None:
        raise _unauthorized("stall bearer token required")
    sha256 = token_hash(cred.credentials)
    known = known_stall(request.app.state, sha256)
    if known is not None:
        request.state.stall = known  # the route need not look it up again (routes/sales.py)
        return
    tokens: StallTokens = request.app.state.stall_tokens
    generation = tokens.generation

    def look_up() -> None:
        stall = _stall_by_sha256(request.app.state.engine, sha256)
        tokens.put(sha256, stall, generation)
        request.state.stall = stall
        request.app.state.contacts.seen(stall.stall_id)

    await run_in_threadpool(look_up)
