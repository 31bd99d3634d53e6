"""An edge process's parts (a stall, the fair scale): started in order, stopped in reverse.

A part that fails to start stops the ones started before it; stopping goes on past a part
that fails to stop, so one bad part never leaves the others running."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)


def start_in_order(steps: Iterable[Callable[[], None]], stop: Callable[[], None]) -> None:
    for step in steps:
        try:
            step()
        except BaseException:
            stop()
            raise


def stop_in_reverse(stops: list[Callable[[], Any]]) -> None:
    """Call and drop each of ``stops``, the last added first."""
    while stops:
        fn = stops.pop()
        try:
            fn()
        except Exception:  # noqa: BLE001 - keep stopping the rest
            logger.exception("error while stopping %s", fn)
