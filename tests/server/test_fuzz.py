"""Whatever a stall sends, the server answers with a verdict, never a 500."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.app import create_app
from server.settings import Settings
from tests.conftest import LiveServer
from tests.server.conftest import ADMIN, StallSim

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children,
                                                                       max_size=5),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str, dict]]:  # type: ignore[type-arg]
    db = tmp_path_factory.mktemp("fuzz") / "m.db"
    with LiveServer(create_app(Settings(db_url=f"sqlite:///{db}", admin_token=ADMIN))) as srv:
        sim = StallSim("S01")
        with srv.client(ADMIN) as c:
            token = c.post("/api/v1/stalls", json={"stall_id": "S01", "name": "x",
                                                   "public_key": sim.public_key}).json()["token"]
            # An item, so price routes get past "no such item" (the manager may then change it).
            c.post("/api/v1/items", json={"plu": "1", "name": "香蕉", "name_en": "Banana",
                                          "category": "水果", "price_unit": "kg", "cap_fen": 2000})
        yield srv, token, sim.sale([("1", "香蕉", 1000, 690, "kg")])


def _mutations() -> st.SearchStrategy[tuple[str, object]]:
    keys = st.sampled_from(["sale_id", "stall_id", "receipt_no", "sold_at", "trace_code", "lines",
                            "total_fen", "prev_hash", "signature", "extra"])
    return st.tuples(keys, json_values)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values)
def test_arbitrary_json_bodies(fuzz_server, body) -> None:  # type: ignore[no-untyped-def]
    srv, token, _ = fuzz_server
    with srv.client(token) as c:
        r = c.post("/api/v1/sales", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 422), r.text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=_mutations(), line_mutation=_mutations())
def test_mutated_sales_are_refused_or_stored(fuzz_server, mutation, line_mutation) -> None:  # type: ignore[no-untyped-def]
    srv, token, good = fuzz_server
    sale = json.loads(json.dumps(good))
    key, value = mutation
    sale[key] = value
    lkey, lvalue = line_mutation
    sale_lines = sale.get("lines")
    if isinstance(sale_lines, list) and sale_lines and isinstance(sale_lines[0], dict):
        sale_lines[0][lkey] = lvalue
    with srv.client(token) as c:
        # json.dumps writes inf as Infinity, which Python's parser on the server accepts.
        r = c.post("/api/v1/sales", content=json.dumps({"sales": [sale]}),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["status"] in ("accepted", "duplicate", "refused")
    if res["status"] == "refused":
        assert res["reason"]



# --- The OpenAPI document against the live server (schemathesis) -------------------------

CONFORMANCE = ("not_a_server_error,status_code_conformance,content_type_conformance,"
               "response_schema_conformance")


def test_every_answer_is_documented(fuzz_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """schemathesis's own runner (examples, boundary cases, fuzzing) against the live server:
    every status code, content type and JSON body it sees must be in /openapi.json."""
    srv, token, _ = fuzz_server
    with srv.client(ADMIN) as c:
        fair = c.put("/api/v1/fair-scale/token").json()["token"]
    # The stall's token everywhere, the manager's where the route wants it, the fair scale's on its
    # own routes.
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'''
headers = {{ Authorization = "Bearer {token}" }}

[[operations]]
include-name = ["POST /api/v1/stalls", "GET /api/v1/sales/{{sale_id}}", "POST /api/v1/items",
                "PATCH /api/v1/items/{{plu}}", "GET /api/v1/export", "GET /api/v1/export/token",
                "PUT /api/v1/export/token", "DELETE /api/v1/export/token"]
headers = {{ Authorization = "Bearer {ADMIN}" }}

[[operations]]
include-name = ["POST /api/v1/inspections", "POST /api/v1/promotions",
                "POST /api/v1/promotions/{{promotion_id}}/cancel", "GET /api/v1/scale-events",
                "GET /api/v1/scale-events/stalls"]
headers = {{ Authorization = "Bearer {ADMIN}" }}

[[operations]]
include-name = ["POST /api/v1/managers", "GET /api/v1/managers",
                "POST /api/v1/managers/{{username}}/disable", "POST /api/v1/managers/{{username}}/enable",
                "PUT /api/v1/managers/{{username}}/password", "GET /api/v1/alerts",
                "POST /api/v1/alerts/{{alert_id}}/ack", "POST /api/v1/stalls/{{stall_id}}/token",
                "DELETE /api/v1/stalls/{{stall_id}}/key", "GET /api/v1/gallery/all",
                "DELETE /api/v1/gallery/{{shared_id}}"]
headers = {{ Authorization = "Bearer {ADMIN}" }}

[[operations]]
include-name = "GET /api/v1/stats/complaints"
headers = {{ Authorization = "Bearer {ADMIN}" }}

[[operations]]
include-path-regex = "^/api/v1/fair-checks$"
include-method = "GET"
headers = {{ Authorization = "Bearer {ADMIN}" }}

# The fair scale's token on its token's routes too (answered 401): the admin's would replace it.
[[operations]]
include-name = ["GET /api/v1/fair-checks/receipt", "POST /api/v1/fair-checks", "GET /api/v1/fair-scale/token",
                "PUT /api/v1/fair-scale/token", "DELETE /api/v1/fair-scale/token"]
headers = {{ Authorization = "Bearer {fair}" }}

[[operations]]
include-name = "GET /api/v1/events"
max-stream-events = 1
''')
    st = Path(sys.executable).parent / "st"
    run = subprocess.run(
        [str(st), "--no-color", "--config-file", str(config), "run", f"{srv.url}/openapi.json",
         "--checks", CONFORMANCE, "--phases", "examples,coverage,fuzzing", "--max-examples", "15",
         "--workers", "1", "--request-timeout", "10", "--max-failures", "20"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    with srv.client() as c:  # every operation was reached
        operations = sum(len(methods) for methods in c.get("/openapi.json").json()["paths"].values())
    assert f"Tested: {operations}\n" in run.stdout, run.stdout[-3000:]


def test_both_kinds_of_422_are_documented(fuzz_server) -> None:  # type: ignore[no-untyped-def]
    """A body that does not fit the model gets FastAPI's list of field errors, one that fits but
    breaks a rule (a special already over) gets one reason: /openapi.json documents both (a
    fuzzing run found the second undocumented)."""
    import datetime as dt

    import jsonschema_rs

    srv, _, _ = fuzz_server
    with srv.client(ADMIN) as c:
        spec = c.get("/openapi.json").json()
        documented = spec["paths"]["/api/v1/promotions"]["post"]["responses"]["422"]
        schema = {**documented["content"]["application/json"]["schema"], "components": spec["components"]}
        now = dt.datetime.now(dt.UTC)
        over = c.post("/api/v1/promotions", json={
            "stall_id": "S01", "plu": "1", "special_price_fen": 500,
            "starts_at": (now - dt.timedelta(hours=2)).isoformat(),
            "ends_at": (now - dt.timedelta(hours=1)).isoformat()})
        misfit = c.post("/api/v1/promotions", json={"stall_id": "S01"})
    assert over.status_code == misfit.status_code == 422
    assert isinstance(over.json()["detail"], str) and "past" in over.json()["detail"]
    assert isinstance(misfit.json()["detail"], list)
    validator = jsonschema_rs.validator_for(schema)
    for answer in (over, misfit):
        validator.validate(answer.json())
    assert not validator.is_valid({"detail": 3})  # the schema is not a catch-all
