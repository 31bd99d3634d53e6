"""The open basket, kept on disk on every change: a stall killed mid-basket (``kill -9``,
a power cut) has the shopper's lines back when it starts again.

One small JSON file in the stall's data folder (``open-basket.json``), written to a
temporary file, synced, renamed over the old one and the folder synced: a crash leaves
the old copy or the new one, whole.  It holds the lines as they were priced (voided ones
too, with the basket's trail), the catalogue they were priced under with its labels and
feed version, and the id the basket's sale will carry.  So a basket restored after the
market changed a price keeps its lines' prices and goes on under the catalogue it
started with (the new one waits for the basket to close, as a feed's does); and a
basket whose sale reached the journal just before the crash (the file not yet removed)
is recognised by that id and not sold twice.  No file: no open basket.

Public API::

    OpenBasketStore(path)
    store.save(SavedBasket) / store.clear() / store.load() -> SavedBasket | None
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

from edge.basket import AuditEvent, BasketLine
from edge.catalogue import Plu
from edge.feed import FeedState
from edge.files import fsync_dir, write_atomic

logger = logging.getLogger(__name__)

FILE = "open-basket.json"


class SavedBasket(BaseModel):
    basket_id: str
    saved_at: dt.datetime
    lines: list[BasketLine]
    audit: list[AuditEvent]
    #: The catalogue the lines were priced under, its labels and the feed it came from.
    catalogue: list[Plu]
    labels: dict[str, str]
    feed: FeedState | None = None
    #: The online order the basket fulfils (``edge.orders``), if any.
    order_id: int | None = None


class OpenBasketStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, basket: SavedBasket) -> None:
        write_atomic(self.path, basket.model_dump_json().encode())

    def clear(self) -> None:
        if self.path.exists():
            self.path.unlink()
            fsync_dir(self.path.parent)

    def load(self) -> SavedBasket | None:
        """The basket open when the stall stopped, or None.  A damaged file is set aside
        (``.damaged``) with an error in the log: the stall starts with an empty basket."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return SavedBasket.model_validate_json(raw)
        except ValidationError as exc:
            aside = self.path.with_name(self.path.name + ".damaged")
            os.replace(self.path, aside)
            logger.error("open basket %s is damaged (%s): set aside as %s, starting empty",
                         self.path, exc.errors()[0]["msg"], aside.name)
            return None
