"""What a management service function refuses, and the HTTP status a route answers with.

Service functions (``server/inspections.py``, ``server/promotions.py``, ...) are shared by
the JSON API and the manager pages, so they raise these instead of ``HTTPException``; a
route turns one into its status with :func:`as_http`, a page into a message on the form.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException

from server import ServerError


class Refused(ServerError):
    """The request breaks a rule of the market (422: the request itself is wrong)."""

    status = 422


class NotFound(Refused):
    """It names a stall, item or record the market does not have."""

    status = 404


class Conflict(Refused):
    """It contradicts what the server holds (a price, another special, an earlier test)."""

    status = 409


@contextmanager
def as_http() -> Iterator[None]:
    """Answer a :class:`Refused` raised inside with its status and message as ``detail``."""
    try:
        yield
    except Refused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
