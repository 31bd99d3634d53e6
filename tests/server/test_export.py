"""The commerce bureau's export (/api/v1/export) on SQLite and PostgreSQL: CSV read back with
Python's ``csv`` module, JSON checked against the schema the server publishes, every value
against the hand-worked market of ``stats_market``; its token; bad ranges."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from server import export, stats
from tests.conftest import REPO
from tests.server import stats_market
from tests.server.conftest import ADMIN
from tests.server.stats_market import DBS, NOV29, NOV30, Market


@pytest.fixture(scope="module", params=DBS)
def market(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    yield from stats_market.serve(request, tmp_path_factory)


def fetch(market: Market, token: str | None = ADMIN, **params: Any) -> Any:
    with market.server.client(token) as c:
        return c.get("/api/v1/export", params=params)


def read_csv(body: bytes) -> list[dict[str, str]]:
    assert body.startswith(b"\xef\xbb\xbf")  # the BOM by default: Excel then reads UTF-8
    return list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"), newline="")))


def as_csv(row: dict[str, Any]) -> dict[str, str]:
    """What the CSV holds for a JSON row: nulls empty, numbers as Python writes them."""
    return {k: "" if v is None else str(v) for k, v in row.items()}


def day_sales(day: str, stall: str, sales: int, total: int, refunds: int = 0,
              refunds_fen: int = 0) -> dict[str, Any]:
    return {"day": day, "stall_id": stall, "stall_name": stats_market.STALLS[stall], "sales": sales,
            "total_fen": total, "refunds": refunds, "refunds_fen": refunds_fen,
            "net_fen": total - refunds_fen}


STALL_SALES = [
    # 11-29: S01 5 x 400; S02 5 x 1000 + 5 x 600; S03 5 x 1000 + 500
    day_sales("2026-11-29", "S01", 5, 2000),
    day_sales("2026-11-29", "S02", 10, 8000),
    day_sales("2026-11-29", "S03", 6, 5500),
    # 11-30: S01 4 x 400 + 402 + 700; S02 5 x 900 + 5 x 660; S03 5 x 900 + 200
    day_sales("2026-11-30", "S01", 6, 2702),
    day_sales("2026-11-30", "S02", 10, 7800),
    day_sales("2026-11-30", "S03", 6, 4700),
    # the pear of 00:00:30, refunded at 09:00: net 0
    {"day": "2026-12-01", "stall_id": "S01", "stall_name": "王记", "sales": 1, "total_fen": 700,
     "refunds": 1, "refunds_fen": 700, "net_fen": 0},
]

INSPECTIONS = [
    {"day": "2026-11-30", "stall_id": "S02", "stall_name": "李记", "plu": "2001", "name": "苹果",
     "tests": 3, "passed": 1, "failed": 2, "max_inhibition_pct": 65.5, "failed_batches": "B-APPLE-2"},
    {"day": "2026-11-30", "stall_id": "S03", "stall_name": "=1+2 张记", "plu": "3001", "name": "鸡蛋",
     "tests": 1, "passed": 1, "failed": 0, "max_inhibition_pct": None, "failed_batches": ""},
]


def test_daily_item_prices_as_csv(market: Market) -> None:
    r = fetch(market, kind="item_prices", start="2026-11-29", end="2026-11-30")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == \
        'attachment; filename="wetmarket-item_prices-2026-11-29-2026-11-30.csv"'
    assert b"\r\n" in r.content  # RFC 4180 line ends
    rows = read_csv(r.content)
    assert list(rows[0]) == [c.name for c in export.COLUMNS["item_prices"]]
    assert rows == [as_csv(x) for x in [*NOV29.values(), *NOV30.values()]]
    assert rows[5]["avg_price_fen"] == "501" and rows[5]["dod_pct"] == "25.25"


def test_stall_daily_sales_as_csv_defuses_formulas(market: Market) -> None:
    rows = read_csv(fetch(market, kind="stall_sales", start="2026-11-29", end="2026-12-01").content)
    # A text cell Excel would run as a formula gets a leading quote; negative numbers stay numbers.
    defused = [{**x, "stall_name": "'" + x["stall_name"] if x["stall_id"] == "S03" else x["stall_name"]}
               for x in STALL_SALES]
    assert rows == [as_csv(x) for x in defused]
    prices = read_csv(fetch(market, kind="item_prices", start="2026-11-30", end="2026-11-30").content)
    assert prices[2]["dod_fen"] == "-100"


def test_csv_without_bom(market: Market) -> None:
    r = fetch(market, kind="inspections", start="2026-11-30", end="2026-11-30", bom="false")
    assert r.content.startswith(b"day,stall_id,")
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8"), newline="")))
    assert rows == [as_csv({**x, "stall_name": "'" + x["stall_name"] if x["stall_id"] == "S03"
                            else x["stall_name"]}) for x in INSPECTIONS]


@pytest.fixture(scope="module")
def export_schema(market: Market) -> jsonschema_rs.Validator:
    """The JSON export's schema as /openapi.json publishes it."""
    with market.server.client() as c:
        spec = c.get("/openapi.json").json()
    content = spec["paths"]["/api/v1/export"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/csv"}
    schema = {**content["application/json"]["schema"], "components": spec["components"]}
    return jsonschema_rs.validator_for(schema)


@pytest.mark.parametrize(("kind", "start", "end", "rows"), [
    ("item_prices", "2026-11-29", "2026-11-30", [*NOV29.values(), *NOV30.values()]),
    ("stall_sales", "2026-11-29", "2026-12-01", STALL_SALES),
    ("inspections", "2026-11-01", "2026-11-30", INSPECTIONS),
])
def test_json_matches_its_published_schema(market: Market, export_schema: jsonschema_rs.Validator,
                                           kind: str, start: str, end: str,
                                           rows: list[dict[str, Any]]) -> None:
    r = fetch(market, kind=kind, start=start, end=end, format="json")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    export_schema.validate(doc)
    assert (doc["kind"], doc["start"], doc["end"]) == (kind, start, end)
    assert doc["columns"] == [{"name": c.name, "unit": c.unit, "zh": c.zh, "description": c.en}
                              for c in export.COLUMNS[kind]]  # type: ignore[index]
    assert [list(row) for row in doc["rows"]] == [[c["name"] for c in doc["columns"]]] * len(rows)
    assert doc["rows"] == rows
    assert dt.datetime.fromisoformat(doc["generated_at"]).utcoffset() == dt.timedelta(hours=8)


def test_schema_refuses_a_wrong_row(export_schema: jsonschema_rs.Validator) -> None:
    """The published schema is strict enough to catch a wrong row (so the test above can fail)."""
    doc = {"kind": "stall_sales", "start": "2026-11-29", "end": "2026-11-29",
           "generated_at": "2026-11-29T10:00:00+08:00", "columns": [],
           "rows": [{**STALL_SALES[0], "total_fen": "2000"}]}
    assert not export_schema.is_valid(doc)
    doc["rows"] = [STALL_SALES[0]]
    assert export_schema.is_valid(doc)


def test_a_year_is_streamed_a_month_at_a_time(market: Market) -> None:
    r = fetch(market, kind="stall_sales", start="2026-01-01", end="2026-12-31", format="json")  # 365 days
    assert r.status_code == 200
    assert r.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.headers
    # 11-23: S01 2 x 300, S02 800; then the days above
    assert r.json()["rows"] == [day_sales("2026-11-23", "S01", 2, 600),
                                day_sales("2026-11-23", "S02", 1, 800), *STALL_SALES]
    chunks = list(export.rows(market.server.app.state.sessionmaker, "stall_sales",
                              dt.date(2026, 1, 1), dt.date(2026, 12, 31)))
    # 31 days each, the last 24: the 11th is 11-07..12-07, with every row
    assert [len(c) for c in chunks] == [0] * 10 + [9, 0]
    assert fetch(market, kind="stall_sales", start="2025-12-31", end="2026-12-31").status_code == 200  # 366


@pytest.mark.parametrize(("params", "field", "words"), [
    ({"start": "2026-12-01", "end": "2026-11-01"}, "start", "after end"),
    ({"start": "2025-12-30", "end": "2026-12-31"}, "end", "at most 366 days"),
    ({"start": "1999-12-31", "end": "2000-01-01"}, "start", "outside"),
    ({"start": "2026-11-01"}, "end", "Field required"),
    ({"start": "2026-11-01", "end": "30.11.2026"}, "end", "date"),
    ({"start": "2026-11-01", "end": "2026-11-30", "kind": "sales"}, "kind", "item_prices"),
    ({"start": "2026-11-01", "end": "2026-11-30", "format": "xlsx"}, "format", "csv"),
])
def test_bad_ranges_are_a_clear_422(market: Market, params: dict[str, str], field: str, words: str) -> None:
    r = fetch(market, **params)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["query", field] and words in error["msg"], error


def test_who_may_read(market: Market) -> None:
    args = {"kind": "stall_sales", "start": "2026-11-29", "end": "2026-11-29"}
    assert fetch(market, None, **args).status_code == 401
    assert fetch(market, "not-a-token", **args).status_code == 401
    stall = fetch(market, market.tokens["S01"], **args)  # a stall reads no other stall's sales
    assert stall.status_code == 401 and "export token" in stall.json()["detail"]
    with market.server.client(ADMIN) as c:
        assert c.get("/api/v1/export/token").json() == {"issued": False, "issued_by": None,
                                                         "issued_at": None}
        issued = c.put("/api/v1/export/token").json()
        bureau = issued["token"]
        assert issued["issued"] and issued["issued_by"] == "admin"
        info = c.get("/api/v1/export/token").json()
        assert info == {k: issued[k] for k in ("issued", "issued_by", "issued_at")}
    assert fetch(market, bureau, **args).status_code == 200
    with market.server.client(bureau) as c:  # the bureau reads; it manages nothing
        assert c.put("/api/v1/export/token").status_code == 401
        assert c.delete("/api/v1/export/token").status_code == 401
        assert c.get("/api/v1/stats/today").status_code == 200
    with market.server.client(ADMIN) as c:
        replaced = c.put("/api/v1/export/token").json()["token"]
        assert fetch(market, bureau, **args).status_code == 401  # the old one is gone
        assert fetch(market, replaced, **args).status_code == 200
        assert c.delete("/api/v1/export/token").status_code == 204
        assert c.delete("/api/v1/export/token").status_code == 404
    assert fetch(market, replaced, **args).status_code == 401


def test_columns_are_documented(market: Market) -> None:
    """Each column with its unit in docs/architecture.md and in the OpenAPI description."""
    docs = (Path(REPO) / "docs" / "architecture.md").read_text(encoding="utf-8")
    with market.server.client() as c:
        described = c.get("/openapi.json").json()["paths"]["/api/v1/export"]["get"]["description"]
    for kind, cols in export.COLUMNS.items():
        assert f"`{kind}`" in docs and f"**{kind}**" in described
        for col in cols:
            assert f"| `{col.name}` | {col.unit or ''} | {col.zh} |" in docs, col
            assert f"`{col.name}` ({col.unit or 'text'}) {col.zh}: {col.en}" in described, col
    assert [c.name for c in export.COLUMNS["item_prices"]] == list(stats.ItemPriceDay.model_fields)
    assert [c.name for c in export.COLUMNS["stall_sales"]] == list(export.StallSalesDay.model_fields)
    assert [c.name for c in export.COLUMNS["inspections"]] == list(export.InspectionDay.model_fields)
