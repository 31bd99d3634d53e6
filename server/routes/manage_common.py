"""What every manager page shares: the route class (sign-in redirect, refusal pages), rendering
with the market's words and times, and reading form fields."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Coroutine
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.datastructures import FormData

from edge.sale import MAX_AMOUNT_FEN
from server.guard import GuardedRoute
from server.refusals import Refused
from server.routes.manage_text import LANGS, TEXT
from server.routes.pages import yuan
from server.settings import Settings
from server.stats import local_today

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
templates = Jinja2Templates(directory=TEMPLATES)
templates.env.filters["yuan"] = yuan

LANG_COOKIE = "wm_lang"
#: No inline script or style anywhere, so an injected tag could not run even if escaping failed.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class PageRoute(GuardedRoute):
    """A page: without a session, a redirect to the sign-in; a refusal, an HTML page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                return await handle(request)
            except HTTPException as exc:
                if exc.status_code == 401:
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse(f"/manage/login?next={quote(target)}", status_code=303)
                if exc.status_code == 403:
                    return render(request, "error.html", {"message": texts(request)("form_expired"),
                                                           "detail": str(exc.detail)}, 403)
                if exc.status_code == 404:
                    return render(request, "error.html", {"message": texts(request)("not_found"),
                                                           "detail": str(exc.detail)}, 404)
                raise

        return page


# ---- rendering ------------------------------------------------------------------------------

def page_lang(request: Request) -> str:
    asked = request.query_params.get("lang")
    if asked in LANGS:
        return asked
    kept = request.cookies.get(LANG_COOKIE)
    return kept if kept in LANGS else "zh"


def texts(request: Request) -> Callable[..., str]:
    words = TEXT[page_lang(request)]

    def t(key: str, **kw: object) -> str:
        text = words.get(key, TEXT["zh"].get(key, key))
        return text.format(**kw) if kw else text

    return t


def render(request: Request, name: str, ctx: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    lang = page_lang(request)

    def when(value: dt.datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
        return value.astimezone(settings.tz).strftime(fmt) if value is not None else "—"

    state = request.state
    ok = request.query_params.get("ok")
    base = {"t": texts(request), "lang": lang, "market": settings.market_name, "when": when,
            "csrf": getattr(state, "csrf_token", ""), "me": getattr(state, "manager_name", None),
            "path": request.url.path, "msg": ok if ok in TEXT[lang] else None}
    response = templates.TemplateResponse(request, f"manage/{name}", {**base, **ctx},
                                          status_code=status_code)
    response.headers["Cache-Control"] = "no-store"  # tokens and prices: never from a cache
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.query_params.get("lang") in LANGS:
        response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, path="/manage", samesite="lax")
    return response


def done(path: str, ok: str) -> RedirectResponse:
    """After a form post that worked: back to the page (Post/Redirect/Get) with its message."""
    return RedirectResponse(f"{path}?{urlencode({'ok': ok})}", status_code=303)


async def read_form(request: Request) -> FormData:
    return await request.form()  # read (and bounded) by the guard already when it checked CSRF


FormDep = Annotated[FormData, Depends(read_form)]


def field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def today(settings: Settings) -> dt.date:
    return local_today(settings.tz)


def fen(text: str, what: str) -> int:
    """A price typed in 元 ("6.9", "12.50") as 分; a clear refusal otherwise."""
    try:
        value = Decimal(text.strip().replace("，", ".").replace("￥", "").replace("¥", ""))
    except InvalidOperation:
        raise Refused(f"{what}：请填写元，如 6.90 — {what}: give yuan, e.g. 6.90") from None
    cents = value * 100
    if not value.is_finite() or cents != cents.to_integral_value() or not 0 < cents <= MAX_AMOUNT_FEN:
        raise Refused(f"{what}：须大于 0 且最多两位小数 — {what}: over 0 with at most two decimals")
    return int(cents)


def local_time(text: str, tz: dt.tzinfo, what: str) -> dt.datetime:
    """A time typed in the market's zone (``datetime-local``: 2026-12-02T08:30) as an instant."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise Refused(f"{what}：时间格式如 2026-12-02T08:30 — {what}: a time like 2026-12-02T08:30") from None
    return value.replace(tzinfo=tz) if value.tzinfo is None else value
