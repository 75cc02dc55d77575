"""HTML pages. Each renders the same data as its JSON twin; htmx requests get one block."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from actscope.app import pages, params
from actscope.app import urls as site_urls
from actscope.app.deps import LiveDep, StoreDep
from actscope.app.errors import AppError
from actscope.app.fast_route import PlainParamsRoute
from actscope.app.live_service import LiveService
from actscope.indexer.store.reader import Store

router = APIRouter(include_in_schema=False)


def render(
    request: Request,
    template: str,
    data: dict[str, Any],
    *,
    page_url: str,
    title: str,
    blocks: dict[str, str] | None = None,
    block: str | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
    json_url: str | None = None,
) -> HTMLResponse:
    """Render a page, or only the block an htmx request targets (blocks: target -> block),
    or only `block`. `page_url`: the page's own URL (base path included), whose JSON
    twin it announces (unless `json_url` names it)."""
    templates = request.app.state.templates
    urls = site_urls.for_request(request)
    context = {"d": data, "title": title, "json_url": json_url or urls.api(page_url), "page_url": page_url}
    target = request.headers.get("hx-target") if request.headers.get("hx-request") else None
    if target and block is None:
        for key, name in (blocks or {}).items():
            if key == target or (key.endswith("*") and target.startswith(key[:-1])):
                block = name
                break
    if block:
        return templates.TemplateResponse(
            request, template, context, block_name=block, status_code=status, headers=headers
        )
    return templates.TemplateResponse(request, template, context, status_code=status, headers=headers)


def _here(request: Request) -> str:
    # The request's URL (path and query, base path included), straight from the ASGI
    # scope (as Starlette's URL quotes them): building request.url costs more than all
    # of a page's links.
    path = site_urls.route_path(request.scope).replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
    q = request.scope.get("query_string", b"").decode()
    return site_urls.for_request(request).site(path) + (f"?{q}" if q else "")


def _or_shown_error(
    view: Callable[[], dict[str, Any]], fallback: Callable[[], dict[str, Any]], key: str = "error"
) -> tuple[dict[str, Any], int]:
    """(view(), 200); if the visitor's input fails it (any error but a 404: empty text,
    busy model, bad position), the page without that input, fallback(), with the error's
    message under data[key] and the error's status. A 404 stays a 404 page."""
    try:
        data, status, message = view(), 200, None
    except AppError as exc:
        if exc.status == 404:
            raise
        data, status, message = fallback(), exc.status, exc.message
    data[key] = message
    return data, status


@router.get("/", response_class=HTMLResponse)
def home(request: Request, store: StoreDep):
    urls = site_urls.for_request(request)
    return render(request, "home.html", pages.home_data(store), page_url=urls.home(), title="actscope")


@router.get("/{model}", response_class=HTMLResponse)
def model_page(request: Request, store: StoreDep, model: str):
    urls = site_urls.for_request(request)
    data = pages.home_data(store)
    data["models"] = [pages.model_data(store, model)]
    return render(request, "home.html", data, page_url=urls.model(model), title=f"{model} · actscope")


@router.get("/{model}/try", response_class=HTMLResponse)
def try_page(
    request: Request,
    store: StoreDep,
    live: LiveDep,
    model: str,
    text: str | None = None,
    source: str | None = None,
    pos: int | None = None,
    k: int = 5,
):
    urls = site_urls.for_request(request)
    data, status = _or_shown_error(
        lambda: pages.try_data(store, live, urls, model, source, text, pos=pos, k=k),
        lambda: {**pages.try_data(store, live, urls, model, source, None), "text": text},
    )
    return render(
        request,
        "try.html",
        data,
        page_url=_here(request),
        title=f"try · {model}",
        blocks={"try-result": "result"},
        status=status,
    )


@router.get("/{model}/search", response_class=HTMLResponse)
def search_page(
    request: Request,
    store: StoreDep,
    live: LiveDep,
    model: str,
    token: str | None = None,
    text: str | None = None,
    source: str | None = None,
):
    urls = site_urls.for_request(request)
    data, status = _or_shown_error(
        lambda: pages.search_data(store, live, urls, model, token, text, source or None),
        lambda: {
            **pages.search_data(store, live, urls, model, None, None, None),
            "token": token,
            "text": text,
            "source": source,
        },
    )
    return render(request, "search.html", data, page_url=_here(request), title=f"search · {model}", status=status)


@router.get("/{model}/sequences/{seq}", response_class=HTMLResponse)
def sequence_page(
    request: Request,
    store: StoreDep,
    live: LiveDep,
    model: str,
    seq: int,
    source: str | None = None,
    index: int | None = None,
    pos: int | None = None,
):
    data = pages.sequence_data(store, model, seq)
    data.update(source=source, index=index, pos=pos, acts=None, scale=1.0, live_error=None)
    if source is not None and index is not None:
        src = pages.get_source(store, model, source)
        pages.check_index(src, index)
        unit = store.unit(model, source, index)
        if unit is not None:
            data["scale"] = max(abs(unit.stats.max), abs(unit.stats.min), 1e-9)
        try:
            res = live.run_ids(data["token_ids"], source)
            data["acts"] = [float(a) for a in res.acts[:, index]]
        except AppError as exc:
            data["live_error"] = exc.message
    return render(
        request,
        "sequence.html",
        data,
        page_url=_here(request),
        title=f"sequence {seq} · {model}",
        blocks={"full-*": "tokens"},
    )


TABLE_FIELDS = ("sort", "order", "page", "per_page", "q", "min_pct", "max_pct", "hide_dead", "unit")


@router.get("/{model}/{source}", response_class=HTMLResponse)
def source_page(request: Request, store: StoreDep, model: str, source: str):
    """The unit table. Its parameters are read as text (see TABLE_FIELDS): bad input is
    shown next to the form it came from, with the visitor's text kept in the boxes.
    `unit=N` (the "go to unit" box) redirects to that unit's page."""
    urls = site_urls.for_request(request)
    raw = {f: request.query_params.get(f, "") for f in TABLE_FIELDS}
    query, errors = params.parse_table_query(raw)
    if raw["unit"].strip():
        src = pages.get_source(store, model, source)
        try:
            index = params.parse_int("unit", raw["unit"], "a unit number")
            if index is None or not 0 <= index < src.n_units:
                raise params.FieldError(
                    "unit", f"{src.slug} has units 0 to {src.n_units - 1:,}; there is no unit {index}."
                )
            return RedirectResponse(urls.unit(model, source, index), status_code=303)
        except params.FieldError as exc:
            errors["unit"] = exc.message
    data = pages.source_data(store, urls, model, source, query, errors=errors)
    typed = bool(errors.keys() & {"min_density", "max_density"})  # both were dropped: show them as typed
    data["form"] = {
        "q": raw["q"],
        "min_pct": raw["min_pct"] if typed else params.density_text(data["min_density"]),
        "max_pct": raw["max_pct"] if typed else params.density_text(data["max_density"]),
        "page": raw["page"] if "page" in data["errors"] else str(data["page"]),
        "unit": raw["unit"],
    }
    bad = data["errors"]
    data["form_errors"] = {
        "filters": [m for f, m in bad.items() if f not in ("page", "unit")],
        "page": [bad["page"]] if "page" in bad else [],
        "unit": [bad["unit"]] if "unit" in bad else [],
    }
    api_query = {k: v for k, v in data["params"].items() if k not in ("min_pct", "max_pct")}
    api_query.update(min_density=data["min_density"], max_density=data["max_density"], page=data["page"])
    # htmx only swaps 2xx answers: its block carries the errors with a 200.
    status = 422 if bad and not request.headers.get("hx-request") else 200
    return render(
        request,
        "source.html",
        data,
        page_url=_here(request),
        json_url=urls.api(urls.source(model, source, **api_query)),
        title=f"{source} · {model}",
        blocks={"units": "units"},
        status=status,
    )


@router.get("/{model}/{source}/random")
def random_unit(request: Request, store: StoreDep, model: str, source: str):
    index = pages.random_index(store, model, source)
    return RedirectResponse(site_urls.for_request(request).unit(model, source, index), status_code=302)


async def unit_page(
    request: Request, model: str, source: str, index: int, band: str | None = None, text: str | None = None
):
    # The hottest page reads app.state itself: two dependencies cost ~10% of a first
    # view (FastAPI resolves each per request).
    store, live = request.app.state.store, request.app.state.live
    # From memory, a unit page is pure CPU work: render it on the loop. Anything that
    # may query DuckDB or wait for the model goes to the threadpool.
    if store.resident and text is None:
        return _unit_page(request, store, live, model, source, index, band, text)
    return await run_in_threadpool(_unit_page, request, store, live, model, source, index, band, text)


router.add_api_route(
    "/{model}/{source}/{index}",
    unit_page,
    methods=["GET"],
    response_class=HTMLResponse,
    route_class_override=PlainParamsRoute,
)


def _unit_with_text(
    request: Request,
    store: Store,
    live: LiveService,
    model: str,
    source: str,
    index: int,
    band: str | None,
    text: str | None,
) -> tuple[dict[str, Any], int]:
    """A unit page's data with the visitor's text, or without it and the error shown."""
    urls = site_urls.for_request(request)

    def unit(text: str | None) -> dict[str, Any]:
        return pages.unit_data(store, live, urls, model, source, index, band=band, text=text, shown_only=True)

    return _or_shown_error(lambda: unit(text), lambda: {**unit(None), "text": text}, key="live_error")


def _unit_page(request, store, live, model, source, index, band, text):
    # A cached page never gets here: CacheMiddleware serves it before routing.
    data, status = _unit_with_text(request, store, live, model, source, index, band, text)
    page = render(
        request,
        "unit.html",
        data,
        page_url=_here(request),
        title=f"{source}/{index} · {model}",
        status=status,
        blocks={"examples": "examples", "live-result": "live"},
    )
    return request.app.state.response_cache.put_for(request, page)


@router.get("/{model}/{source}/{index}/live", response_class=HTMLResponse)
def unit_live(
    request: Request,
    store: StoreDep,
    live: LiveDep,
    model: str,
    source: str,
    index: int,
    text: str | None = None,
    band: str | None = None,
):
    """The live block of a unit page (htmx); the shareable URL is pushed to the address bar."""
    share = site_urls.for_request(request).unit(
        model, source, index, band=band if band not in (None, "top") else None, text=text
    )
    if not request.headers.get("hx-request"):
        return RedirectResponse(share, status_code=303)
    data, status = _unit_with_text(request, store, live, model, source, index, band, text)
    # htmx only swaps 2xx responses by default; the error is shown inside the block.
    return render(
        request,
        "unit.html",
        data,
        page_url=share,
        title="",
        block="live",
        status=200 if status < 500 else status,
        headers={"HX-Push-Url": share, "X-Live-Status": str(status)},
    )
