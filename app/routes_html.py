"""HTML pages. Each renders the same data as its JSON twin; htmx requests get one block."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from actscope.app import pages, urls, views
from actscope.app.deps import LiveDep, StoreDep
from actscope.app.errors import AppError
from actscope.app.fast_route import PlainParamsRoute

router = APIRouter(include_in_schema=False)


def render(
    request: Request,
    template: str,
    data: dict[str, Any],
    *,
    html_url: str,
    title: str,
    blocks: dict[str, str] | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """Render a page, or only the block an htmx request targets (blocks: target -> block)."""
    templates = request.app.state.templates
    context = {"d": data, "title": title, "json_url": urls.api(html_url), "page_url": html_url}
    target = request.headers.get("hx-target") if request.headers.get("hx-request") else None
    block = None
    if target:
        for key, name in (blocks or {}).items():
            if key == target or (key.endswith("*") and target.startswith(key[:-1])):
                block = name
                break
    if block:
        return templates.TemplateResponse(
            request, template, context, block_name=block, status_code=status, headers=headers
        )
    return templates.TemplateResponse(request, template, context, status_code=status, headers=headers)


def _path(request: Request) -> str:
    # request.url.path and .query, straight from the ASGI scope (as Starlette's URL
    # quotes them): building request.url costs more than all of a page's links.
    path = request.scope["path"].replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
    q = request.scope.get("query_string", b"").decode()
    return path + (f"?{q}" if q else "")


@router.get("/", response_class=HTMLResponse)
def home(request: Request, store: StoreDep):
    return render(request, "home.html", pages.home_data(store), html_url="/", title="actscope")


@router.get("/{model}", response_class=HTMLResponse)
def model_page(request: Request, store: StoreDep, model: str):
    data = pages.home_data(store)
    data["models"] = [pages.model_data(store, model)]
    return render(request, "home.html", data, html_url=urls.model(model), title=f"{model} · actscope")


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
    status, error = 200, None
    try:
        data = views.try_view(store, live, model, source, text, pos=pos, k=k)
    except AppError as exc:
        if exc.status == 404:
            raise
        data = views.try_view(store, live, model, source, None)
        data["text"] = text
        status, error = exc.status, exc.message
    data["error"] = error
    return render(
        request,
        "try.html",
        data,
        html_url=_path(request),
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
    status, error = 200, None
    try:
        data = views.search_view(store, live, model, token, text, source or None)
    except AppError as exc:
        if exc.status == 404:
            raise
        data = views.search_view(store, live, model, None, None, None)
        data.update(token=token, text=text, source=source)
        status, error = exc.status, exc.message
    data["error"] = error
    return render(request, "search.html", data, html_url=_path(request), title=f"search · {model}", status=status)


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
        html_url=_path(request),
        title=f"sequence {seq} · {model}",
        blocks={"full-*": "tokens"},
    )


@router.get("/{model}/{source}", response_class=HTMLResponse)
def source_page(
    request: Request,
    store: StoreDep,
    model: str,
    source: str,
    sort: str = "max",
    order: str = "desc",
    page: int = 1,
    per_page: int = 50,
    q: str = "",
    min_density: float | None = None,
    max_density: float | None = None,
):
    data = pages.source_data(
        store,
        model,
        source,
        sort=sort,
        order=order,
        page=page,
        per_page=per_page,
        q=q,
        min_density=min_density,
        max_density=max_density,
    )
    return render(
        request, "source.html", data, html_url=_path(request), title=f"{source} · {model}", blocks={"units": "units"}
    )


@router.get("/{model}/{source}/random")
def random_unit(store: StoreDep, model: str, source: str):
    index = pages.random_index(store, model, source)
    return RedirectResponse(urls.unit(model, source, index), status_code=302)


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


def _unit_page(request, store, live, model, source, index, band, text):
    # A cached page never gets here: CacheMiddleware serves it before routing.
    status, live_error = 200, None
    try:
        data = views.unit_view(store, live, model, source, index, text=text, band=band, shown_only=True)
    except AppError as exc:
        if exc.status == 404 or text is None:
            raise
        data = views.unit_view(store, live, model, source, index, band=band, shown_only=True)
        data["text"] = text
        status, live_error = exc.status, exc.message
    data["live_error"] = live_error
    page = render(
        request,
        "unit.html",
        data,
        html_url=_path(request),
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
    share = urls.unit(model, source, index, band=band if band not in (None, "top") else None, text=text)
    if not request.headers.get("hx-request"):
        return RedirectResponse(share, status_code=303)
    data = pages.unit_data(store, model, source, index)
    data.update(text=text, live=None, live_error=None, band=band or "top")
    status = 200
    try:
        data["live"] = pages.live_unit_data(live, store, model, source, index, text)
    except AppError as exc:
        if exc.status == 404:
            raise
        status, data["live_error"] = exc.status, exc.message
    templates = request.app.state.templates
    context = {"d": data, "title": "", "json_url": urls.api(share), "page_url": share}
    # htmx only swaps 2xx responses by default; the error is shown inside the block.
    return templates.TemplateResponse(
        request,
        "unit.html",
        context,
        block_name="live",
        status_code=200 if status < 500 else status,
        headers={"HX-Push-Url": share, "X-Live-Status": str(status)},
    )
