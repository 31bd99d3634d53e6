"""The market server (FastAPI): ingest, catalogue, prices, trace pages, big screen.

Exception tree::

    ServerError             root of everything this package raises outside a request
     +-- ConfigError        bad settings (database URL, port, token)
"""

from __future__ import annotations


class ServerError(Exception):
    """Root of all server errors."""


class ConfigError(ServerError):
    """Bad server settings."""
