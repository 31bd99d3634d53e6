"""The commerce bureau's export (CSV or JSON, streamed) and the bureau's read token."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server import export, stats
from server.auth import require_manager
from server.deps import SettingsDep
from server.guard import GuardedRoute, errors
from server.meta_token import EXPORT
from server.routes.stats import refused_as_422
from server.routes.tokens import add_token_routes

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/export", tags=["export"], route_class=GuardedRoute)

#: Its own scheme (not ``server.auth.bearer``): the request guard takes that one for a
#: stall's token, and this route takes a manager's, the admin's or the bureau's.
reader_bearer = HTTPBearer(auto_error=False, scheme_name="ExportReader",
                           description="the bureau's export token (PUT /api/v1/export/token), "
                           "or the admin token; a signed-in manager needs none")
ReaderCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(reader_bearer)]


def require_reader(request: Request, cred: ReaderCredentials) -> str:
    """Who reads the export: a signed-in manager, the admin token, or the bureau's token."""
    try:
        return require_manager(request, cred).who
    except HTTPException:
        if cred is not None:
            with request.app.state.sessionmaker() as session:
                if export.is_bureau_token(session, cred.credentials):
                    return "bureau"
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "the export needs the bureau's export "
                            "token, the admin token or a manager's sign-in",
                            headers={"WWW-Authenticate": "Bearer"}) from None


ReaderDep = Annotated[str, Depends(require_reader)]


def _columns_doc() -> str:
    parts = []
    for kind, cols in export.COLUMNS.items():
        lines = "\n".join(f"- `{c.name}` ({c.unit or 'text'}) {c.zh}: {c.en}" for c in cols)
        parts.append(f"**{kind}**\n\n{lines}")
    return "\n\n".join(parts)


#: A text cell starting with one of these is a formula to Excel (CSV injection): a stall
#: named ``=HYPERLINK(...)`` would become a link in the bureau's sheet.  Such a cell gets a
#: leading ``'``, as OWASP advises; numbers are never text, so a negative change stays one.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv(chunks: Iterator[list[export.Row]], kind: export.Kind, bom: bool) -> Iterator[str]:
    names = [c.name for c in export.COLUMNS[kind]]
    buf = io.StringIO()
    writer = csv.writer(buf)  # RFC 4180: quoted where needed, CRLF line ends
    writer.writerow(names)
    yield ("\ufeff" if bom else "") + buf.getvalue()
    for chunk in chunks:
        buf.seek(0)
        buf.truncate()
        for row in chunk:
            values = row.model_dump()
            writer.writerow([_cell(values[n]) for n in names])
        yield buf.getvalue()


def _json(chunks: Iterator[list[export.Row]], head: dict[str, Any]) -> Iterator[str]:
    text = json.dumps(head, ensure_ascii=False)
    yield text[:-1] + ', "rows": ['
    first = True
    for chunk in chunks:
        if not chunk:
            continue
        body = ",\n".join(json.dumps(r.model_dump(mode="json"), ensure_ascii=False) for r in chunk)
        yield ("\n" if first else ",\n") + body
        first = False
    yield "]}\n"


@router.get(
    "", response_class=StreamingResponse,
    responses={200: {"model": export.ExportDoc,
                     "description": "CSV (`format=csv`, UTF-8, a header row, CRLF line ends) or "
                                    "JSON (`format=json`), streamed",
                     "content": {"text/csv": {"schema": {"type": "string"}}}},
               **errors(401)},
    description="The commerce bureau's export of market days `start`..`end` (at most 366), "
                "one `kind` per request. CSV is UTF-8 with a byte-order mark by default, so Excel "
                "reads the Chinese right (`bom=false` leaves it out); empty cells are nulls; a text "
                "cell starting with `=`, `+`, `-` or `@` gets a leading `'` (Excel would run it "
                "as a formula). "
                "Money in integer 分, weights in grams, percentages with 2 decimals, days in the "
                "market's time zone. Read with the bureau's export token, the admin token, or "
                "a manager's sign-in.\n\nColumns:\n\n" + _columns_doc())
def export_table(
    request: Request, settings: SettingsDep, reader: ReaderDep,
    start: Annotated[dt.date, Query(description="first market day")],
    end: Annotated[dt.date, Query(description="last market day (included)")],
    kind: Annotated[export.Kind, Query(description="which table")] = "item_prices",
    fmt: Annotated[Literal["csv", "json"], Query(alias="format")] = "csv",
    bom: Annotated[bool, Query(description="CSV only: start with a UTF-8 byte-order mark")] = True,
) -> StreamingResponse:
    """Daily item prices, stall daily sales or inspections, as CSV or JSON."""
    with refused_as_422():
        stats.check_range(start, end, stats.MAX_EXPORT_DAYS)
    logger.info("export %s %s..%s as %s for %s", kind, start, end, fmt, reader)
    chunks = export.rows(request.app.state.read_sessionmaker, kind, start, end)
    filename = f"wetmarket-{kind}-{start.isoformat()}-{end.isoformat()}.{fmt}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if fmt == "csv":
        return StreamingResponse(_csv(chunks, kind, bom), media_type="text/csv; charset=utf-8",
                                 headers=headers)
    head = {"kind": kind, "start": start.isoformat(), "end": end.isoformat(),
            "generated_at": dt.datetime.now(settings.tz).isoformat(timespec="seconds"),
            "columns": [c.model_dump() for c in export.columns(kind)]}
    return StreamingResponse(_json(chunks, head), media_type="application/json", headers=headers)


add_token_routes(router, "/token", EXPORT, "the bureau", "a read token for the commerce bureau's export")
