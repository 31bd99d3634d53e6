"""The server's routes: the order they are registered in (server.app, by traffic) changes
only how fast a request finds its route, never which route it finds."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from starlette.routing import Mount

from server.app import create_app
from server.settings import Settings

PARAM = re.compile(r"{([^}:]+)(?::([^}]+))?}")


def _leaves(routes: list[Any], group: int | None = None) -> Iterator[tuple[int, Any]]:
    """Every route with the index of the top-level entry (an included router) it belongs to."""
    for i, route in enumerate(routes):
        inner = getattr(route, "original_router", None)  # FastAPI's included router
        if inner is not None:
            yield from _leaves(inner.routes, i if group is None else group)
        else:
            yield (i if group is None else group), route


def _sample(path: str) -> str:
    """A request path for the route ``path``: each parameter given a value of its kind."""
    return PARAM.sub(lambda m: "7" if m.group(2) in ("int", "float") else "sample-7", path)


def test_no_route_answers_a_path_another_group_of_routes_also_answers(tmp_path: Path) -> None:
    app = create_app(Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token="x" * 12))
    leaves = [(g, r) for g, r in _leaves(list(app.router.routes)) if hasattr(r, "path_regex")]
    assert len(leaves) > 100  # every API route and page was found
    clashes = []
    for ga, a in leaves:
        path = _sample(a.path)
        for gb, b in leaves:
            if gb == ga:
                continue  # routes of one router keep their own order
            methods_a, methods_b = getattr(a, "methods", None), getattr(b, "methods", None)
            if methods_a and methods_b and not methods_a & methods_b:
                continue
            if isinstance(b, Mount):
                hit = path == b.path or path.startswith(b.path.rstrip("/") + "/")
            else:
                hit = b.path_regex.match(path) is not None
            if hit:
                clashes.append(f"{a.path} {sorted(methods_a or [])} also matches {b.path}")
    assert clashes == []
    # ... and the hot paths come first: the uploads right after the health probe.
    group = {getattr(r, "path", None): g for g, r in leaves}
    assert group["/healthz"] < group["/api/v1/sales"] < group["/api/v1/feed"] < \
        group["/api/v1/stats/today"] < group["/api/v1/managers"]
