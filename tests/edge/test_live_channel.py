"""The screens' live channel (``edge.screens.app.event_stream``) never leaves a page on an old
state: after the last publish, the last state a stream sent is the last one published.

Publishes come from other threads (the flow's, the link's, the fair scale's scanner) while the
stream reads on the server's event loop. When it read the version and the JSON as two
attributes, a publish landing between the two reads paired the new version with the old JSON;
the stream then believed it had sent the new state and waited for the next change, which on a
quiet screen never came (the fair scale's receipt stayed ``none``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import threading
from collections.abc import Iterator

import pytest

from edge.screens.app import event_stream
from edge.screens.hub import Publisher

ROUNDS = 3000


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Threads switched as often as the interpreter can, so publishes land inside the stream's
    reads (at the default 5 ms they do, but rarely)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


async def _watch(hub: Publisher, rounds: int) -> tuple[list[int], int]:
    """Publish ``rounds`` states from another thread as fast as it can while a stream reads the
    hub; return the versions the stream sent, in order, once it is quiet (or 2 s after the last
    publish), and the last version published."""
    stop = threading.Event()
    stream = event_stream(hub, stop).body_iterator
    sent: list[int] = []
    changed = asyncio.Event()

    async def read() -> None:
        async for chunk in stream:
            text = chunk if isinstance(chunk, str) else bytes(chunk).decode()
            if text.startswith("event: state"):
                sent.append(json.loads(text.split("data: ", 1)[1]).get("v", 0))  # {} before any
                changed.set()

    def publish() -> None:
        # A state the size of a busy stall screen's, so that a publish takes a while.
        for i in range(rounds):
            hub.publish({"round": i, "basket": list(range(i % 7, 300))})

    reader = asyncio.create_task(read())
    try:
        await asyncio.get_running_loop().run_in_executor(None, publish)
        last = hub.latest[0]
        with contextlib.suppress(TimeoutError):
            while not sent or sent[-1] != last:
                changed.clear()
                await asyncio.wait_for(changed.wait(), timeout=2.0)
    finally:
        stop.set()
        reader.cancel()
    return sent, last


def test_the_last_state_published_is_the_last_state_sent(busy_switching: None) -> None:
    sent, last = asyncio.run(_watch(Publisher(), ROUNDS))
    assert last == ROUNDS
    # Each state sent once, newer than the one before: an old state sent after a newer version
    # was read is the stream pairing a new version with old JSON.
    repeats = [(a, b) for a, b in itertools.pairwise(sent) if b <= a]
    assert not repeats, f"{len(repeats)} states sent out of order, first {repeats[:5]}"
    assert sent[-1] == last, f"the stream's last state is version {sent[-1]}, {last} was published"
    assert len(sent) > 10  # it read while the publishes went on, not only at the end
