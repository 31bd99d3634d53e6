"""The demo market's office work, done through the market server's API as a real market's is.

Before the stalls open, the market enters its catalogue (items with PLU, names, category,
legal price unit, origin, recognizer label and caps) and each stall's prices (yesterday's
first where they changed, so the price history tells why), today's specials and rapid
tests (one batch fails, and is blocked at its stall through the feed), and a manager
account for ``/manage``.  The items and prices are the stalls' config seeds
(``edge.demo_data``), so the feed the stalls follow agrees with what they start from.
Plain HTTP with the admin token (a manager's rights): no server code is imported.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import httpx

from edge import EdgeError
from edge.demo_data import (
    RAPID_TESTER,
    RAPID_TESTS,
    SPECIALS,
    YESTERDAY,
    batch_code,
    market_items,
    stall_prices,
)

logger = logging.getLogger(__name__)

MANAGER_USERNAME = "demo"
MANAGER_NAME = "演示经理"
OPENING_WHY = "开市定价"


@dataclass(frozen=True)
class ManagerLogin:
    """The demo manager's sign-in, printed on the demo's console."""

    username: str
    password: str


def _ok(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        raise EdgeError(f"market server refused {r.request.method} {r.request.url.path}: "
                        f"{r.status_code} {r.text[:500]}")
    return r.json() if r.content else None


def seed_market(client: httpx.Client, now: dt.datetime, *, password: str | None = None) -> ManagerLogin:
    """Enter the demo market's catalogue, prices, specials, rapid tests and manager.

    ``client`` talks to a fresh market server with the admin token; ``now`` is an aware
    time in the market's zone (its date names the batches, as the stalls' configs do).
    """
    if now.tzinfo is None:
        raise ValueError("now must carry the market's zone")
    now = now.replace(microsecond=0)
    for item in market_items():
        _ok(client.post("/api/v1/items", json=item))
    yesterday = {(sid, plu): (fen, why) for sid, plu, fen, why in YESTERDAY}
    for sid, plu, fen in stall_prices():
        why = OPENING_WHY
        if (sid, plu) in yesterday:
            old, why = yesterday[sid, plu]
            _ok(client.put(f"/api/v1/prices/{sid}/{plu}",
                           json={"unit_price_fen": old, "why": "昨日价格"}))
        _ok(client.put(f"/api/v1/prices/{sid}/{plu}", json={"unit_price_fen": fen, "why": why}))
    for sid, plu, fen, start_min, end_min, title in SPECIALS:
        _ok(client.post("/api/v1/promotions", json={
            "stall_id": sid, "plu": plu, "special_price_fen": fen,
            "starts_at": (now + dt.timedelta(minutes=start_min)).isoformat(),
            "ends_at": (now + dt.timedelta(minutes=end_min)).isoformat(), "title": title}))
    # The tests were read this morning, a few minutes apart, and never before midnight:
    # the big screen shows today's.
    midnight = now.replace(hour=0, minute=0, second=0)
    day = now.strftime("%Y%m%d")
    for k, (sid, plu, inhibition) in enumerate(RAPID_TESTS):
        tested_at = max(midnight, now - dt.timedelta(minutes=3 * (len(RAPID_TESTS) - k)))
        _ok(client.post("/api/v1/inspections", json={
            "batch_code": batch_code(plu, day), "plu": plu, "stall_id": sid,
            "inhibition_percent": inhibition, "tester": RAPID_TESTER,
            "tested_at": tested_at.isoformat()}))
    login = ManagerLogin(MANAGER_USERNAME, password or secrets.token_urlsafe(9))
    _ok(client.post("/api/v1/managers", json={"username": login.username,
                                              "display_name": MANAGER_NAME,
                                              "password": login.password}))
    logger.info("demo market seeded: %d items, %d prices, %d specials, %d rapid tests, manager %s",
                len(market_items()), len(stall_prices()), len(SPECIALS), len(RAPID_TESTS),
                login.username)
    return login
