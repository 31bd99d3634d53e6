"""Market managers' accounts: who may use ``/manage``, and the sign-in throttle.

Passwords are stored as argon2id hashes (``argon2-cffi``, its RFC 9106 low-memory
profile); a hash made with weaker parameters is replaced at the next sign-in.  The
admin token creates only the first account; after that managers add managers.  An
account is disabled, never deleted (history rows name it), and disabling it or
changing its password bumps its ``session_epoch``, which every session cookie
carries, so the sessions signed before are refused at their next request.

Failed sign-ins are counted per username and per client address in the database
(``sign_in_failures``), so a restart or a second server process does not reset them:
the ``free``-th failure in a row locks that name or address for 30 s, each further one
for twice as long, up to an hour; a success clears both counts, and a count left alone
for a day is forgotten.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from server import db
from server.auth import Actor
from server.refusals import Conflict, NotFound, Refused

logger = logging.getLogger(__name__)

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,31}$")
PASSWORD_MIN, PASSWORD_MAX = 8, 128

_hasher = PasswordHasher()
@functools.cache
def _dummy_hash() -> str:
    """Verified against when the username is unknown, so that answer takes as long as a wrong
    password and does not tell which usernames exist.  Made at the first sign-in, not at
    import: an argon2id hash costs ~0.3 s, which every process importing the server paid."""
    return _hasher.hash("wetmarket: no such manager")


class Forbidden(Refused):
    """The actor may not do this (the admin token once a manager exists, a stall)."""

    status = 403


class SignInFailed(Refused):
    """Wrong username or password, or a disabled account (one message for all three)."""

    status = 401


class SignInLocked(Refused):
    """Too many failed sign-ins for this username or from this address."""

    status = 429

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed sign-ins: try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_username(username: str) -> str:
    if not USERNAME_RE.fullmatch(username):
        raise Refused("username: 2-32 characters of a-z, 0-9, '_', '.', '-', starting with a "
                      "letter or digit")
    return username


def check_password(password: str) -> str:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise Refused(f"password: {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    return password


def check_display_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 64:
        raise Refused("display name: 1 to 64 characters")
    return name


def count(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(db.Manager)).scalar_one())


def list_all(session: Session) -> list[db.Manager]:
    return list(session.execute(select(db.Manager).order_by(db.Manager.username)).scalars())


def _require_manager_actor(actor: Actor) -> None:
    if actor.kind != "manager":
        raise Forbidden("only a signed-in manager may do this; the admin token only creates the "
                        "first manager")


def create(session: Session, actor: Actor | None, username: str, display_name: str,
           password: str) -> db.Manager:
    """Add an account: by a manager, or by the admin token while there is none; caller commits.

    ``actor`` None is the server's operator at its console (``wetmarket manager add``), who
    may add one at any time: the way back in when every manager is locked out.
    """
    if actor is not None and actor.kind == "stall":
        raise Forbidden("a stall cannot add managers")
    if actor is not None and actor.kind == "admin" and count(session) > 0:
        raise Forbidden("a manager exists: the admin token only creates the first one; "
                        "a signed-in manager adds the others")
    check_username(username)
    display_name = check_display_name(display_name)
    check_password(password)
    if session.get(db.Manager, username) is not None:
        raise Conflict(f"manager {username} exists")
    manager = db.Manager(username=username, display_name=display_name,
                         password_hash=hash_password(password), created_at=_now(),
                         created_by=actor.who if actor else "console", disabled=False,
                         session_epoch=0)
    session.add(manager)
    session.flush()
    logger.info("manager %s added by %s", username, manager.created_by)
    return manager


def get(session: Session, username: str) -> db.Manager:
    manager = session.get(db.Manager, username)
    if manager is None:
        raise NotFound(f"no manager {username}")
    return manager


def set_disabled(session: Session, actor: Actor, username: str, disabled: bool) -> db.Manager:
    """Disable (sessions end at once) or enable an account; caller commits."""
    _require_manager_actor(actor)
    if disabled and username == actor.name:
        raise Conflict("you cannot disable your own account")
    manager = get(session, username)
    if manager.disabled != disabled:
        manager.disabled = disabled
        manager.session_epoch += 1
        logger.info("manager %s %s by %s", username, "disabled" if disabled else "enabled",
                    actor.who)
    return manager


def change_password(session: Session, actor: Actor, username: str, new_password: str,
                    current_password: str | None = None) -> db.Manager:
    """A manager's own password (the current one required) or another's (a reset); either
    way every session of that account ends.  Caller commits."""
    _require_manager_actor(actor)
    manager = get(session, username)
    if username == actor.name and not _verify(manager.password_hash, current_password or ""):
        raise Forbidden("the current password is wrong")
    check_password(new_password)
    manager.password_hash = hash_password(new_password)
    manager.session_epoch += 1
    logger.info("password of manager %s changed by %s", username, actor.who)
    return manager


def end_sessions(session: Session, actor: Actor) -> db.Manager:
    """Sign the actor's account out everywhere; caller commits (and issues a new cookie)."""
    _require_manager_actor(actor)
    manager = get(session, actor.name)
    manager.session_epoch += 1
    return manager


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# ---- sign-in and its throttle ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Throttle:
    """How many failures are free, and the lockout after them (doubling up to ``max_s``)."""

    free: int
    base_s: int = 30
    max_s: int = 3600
    forget_after: dt.timedelta = dt.timedelta(days=1)

    def lock_s(self, failures: int) -> int:
        """The lockout after the ``failures``-th failure in a row: none before ``free``."""
        if failures < self.free:
            return 0
        return min(self.base_s * 2 ** min(failures - self.free, 20), self.max_s)


#: Five tries per username, then 30 s; twenty per address, which a market office's shared connection
#: (several managers behind one address) needs.
USER_THROTTLE = Throttle(free=5)
ADDR_THROTTLE = Throttle(free=20)


def _subjects(username: str, address: str) -> list[tuple[str, str, Throttle]]:
    return [("user", username.lower()[:64], USER_THROTTLE), ("addr", address[:64], ADDR_THROTTLE)]


def locked_for(session: Session, username: str, address: str, now: dt.datetime | None = None) -> int:
    """Seconds until this username and this address may try again (0: now)."""
    now = now or _now()
    wait = 0
    for scope, subject, _ in _subjects(username, address):
        row = session.get(db.SignInFailure, (scope, subject))
        if row is not None and row.locked_until is not None and row.locked_until > now:
            wait = max(wait, math.ceil((row.locked_until - now).total_seconds()))
    return wait


def record_failure(session: Session, username: str, address: str,
                   now: dt.datetime | None = None) -> None:
    now = now or _now()
    for scope, subject, throttle in _subjects(username, address):
        row = session.get(db.SignInFailure, (scope, subject))
        if row is None:
            row = db.SignInFailure(scope=scope, subject=subject, failures=0, last_failure_at=now)
            session.add(row)
        elif now - row.last_failure_at > throttle.forget_after:
            row.failures = 0
        row.failures += 1
        row.last_failure_at = now
        lock = throttle.lock_s(row.failures)
        row.locked_until = now + dt.timedelta(seconds=lock) if lock else None


def _clear_failures(session: Session, username: str, address: str) -> None:
    for scope, subject, _ in _subjects(username, address):
        session.execute(delete(db.SignInFailure).where(db.SignInFailure.scope == scope,
                                                        db.SignInFailure.subject == subject))


def sign_in(session: Session, username: str, password: str, address: str,
            now: dt.datetime | None = None) -> db.Manager:
    """The account for this username and password, or a refusal; caller commits (a failure
    is counted, so commit after a refusal too).

    While a username or address is locked nothing is checked (and no argon2 time spent).
    """
    wait = locked_for(session, username, address, now)
    if wait:
        raise SignInLocked(wait)
    manager = session.get(db.Manager, username) if USERNAME_RE.fullmatch(username) else None
    good = _verify(manager.password_hash if manager else _dummy_hash(), password[:PASSWORD_MAX * 4])
    if manager is None or not good or manager.disabled:
        record_failure(session, username, address, now)
        # An unknown name is not logged: people type their password into the name field.
        logger.info("failed sign-in to /manage as %s from %s",
                    username if manager is not None else "an unknown username", address)
        raise SignInFailed("wrong username or password")
    _clear_failures(session, username, address)
    if _hasher.check_needs_rehash(manager.password_hash):
        manager.password_hash = hash_password(password)
    logger.info("manager %s signed in from %s", username, address)
    return manager
