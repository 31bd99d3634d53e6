"""Request dependencies, so handlers read like their signature."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from server.auth import require_admin
from server.events import Broker
from server.settings import Settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_read_session(request: Request) -> Iterator[Session]:
    """A session on the read replica (``Settings.read_db_url``), or the primary without one:
    for what only reads and may be a moment behind (statistics, the big screen, export)."""
    with request.app.state.read_sessionmaker() as session:
        yield session


@contextmanager
def write_lock(request: Request) -> Iterator[None]:
    """Serialise writers on SQLite (one server process): a deferred transaction that
    read first and writes later would otherwise fail with SQLITE_BUSY instead of waiting."""
    lock: threading.Lock | None = request.app.state.write_lock
    if lock is None:
        yield
        return
    with lock:
        yield


SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
AdminDep = Annotated[None, Depends(require_admin)]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_broker(request: Request) -> Broker:
    return request.app.state.broker


SettingsDep = Annotated[Settings, Depends(get_settings)]
BrokerDep = Annotated[Broker, Depends(get_broker)]
