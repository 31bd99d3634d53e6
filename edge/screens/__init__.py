"""The stall's two screens, served by the stall process on 127.0.0.1 (issue 18).

``/vendor``: live weight and weighing state, the four guesses, the basket, PLU search with
an on-screen keypad, tare, void, discard, checkout, reprint, price change, teaching and
plain warnings.  ``/customer`` (明码标价): weight, unit price in its legal unit, amount,
basket, total, origin and inspection result, in large type.

``hub.ScreenHub`` turns the flow's snapshot and the stall's other parts into one JSON
state and publishes it on every change; ``app.create_app`` serves the pages, the live
channel (Server-Sent Events, ``GET /api/events``) and one HTTP call per vendor action;
``app.ScreenServer`` runs it in a thread of the stall, ending on the stall's stop event.
The pages are plain HTML and JavaScript from ``static/`` (no CDN, no library) and put
every value in the page as text, never as markup.
"""

from __future__ import annotations

from edge.screens.app import ScreenServer, create_app
from edge.screens.hub import ScreenHub

__all__ = ["ScreenHub", "ScreenServer", "create_app"]
