"""Fixtures: a real simulator on a real pty, and a Link on its other end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from firmware_bridge.link import Link
from firmware_bridge.sim import Simulator


@pytest.fixture
def sim(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    protocol = getattr(request, "param", "cas")
    s = Simulator(protocol=protocol, capacity_g=15000, e_g=5, seed=7)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def link(sim: Simulator) -> Iterator[Link]:
    lk = Link(sim.port, protocol=sim.protocol, freshness_s=0.5, reconnect_s=0.1)
    lk.start()
    yield lk
    lk.stop()
