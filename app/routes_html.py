"""HTML pages. Each renders the same data as its JSON twin; htmx requests get one block."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from actscope.app import (
    compare_data,
    explain_data,
    fast_route,
    head_view,
    pages,
    params,
    search_data,
    similar_data,
    try_data,
    unit_view,
)
from actscope.app import urls as site_urls
from actscope.app.deps import CatalogDep, LiveDep, StoreDep, get_store
from actscope.app.errors import AppError
from actscope.app.fast_route import PlainParamsRoute
from actscope.app.live_service import LiveService
from actscope.app.render import page_bytes
from actscope.indexer import kinds
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
    context["request"] = request
    for processor in templates.context_processors:
        context.update(processor(request))
    body = page_bytes(templates.get_template(template), context)
    return HTMLResponse(body, status_code=status, headers=headers)


def _here(request: Request) -> str:
    # The request's URL (path and query, base path included), straight from the ASGI
    # scope (as Starlette's URL quotes them): building request.url costs more than all
    # of a page's links.
    path = site_urls.route_path(request.scope).replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
    q = request.scope.get("query_string", b"").decode()
    return site_urls.for_request(request).site(path) + (f"?{q}" if q else "")


def _shown_status(exc: AppError) -> int:
    return 422 if isinstance(exc, params.FieldError) else exc.status


def _or_shown_error(
    view: Callable[[], dict[str, Any]], fallback: Callable[[], dict[str, Any]], key: str = "error"
) -> tuple[dict[str, Any], int]:
    """(view(), 200); if the visitor's input fails it (any error but a 404: empty text,
    busy model, bad position), the page without that input, fallback(), with the error
    (see _shown_error). A missing model, source or unit stays a 404 page; a field's
    error, such as a position past the text, is shown, as a 422 like every form error of
    the pages (the API answers 404 to a well-formed miss)."""
    try:
        data = view()
    except AppError as exc:
        return _shown_error(exc, fallback, key)
    data[key], data[f"{key}_field"] = None, None
    return data, 200


def _shown_error(
    exc: AppError, fallback: Callable[[], dict[str, Any]], key: str = "error"
) -> tuple[dict[str, Any], int]:
    """(fallback() with the error's message under data[key] and the field it is about
    under data[key + "_field"], whose box is then marked invalid; the page's status). A
    404 that is not a field's (a missing model, source or unit) is raised again."""
    if exc.status == 404 and not isinstance(exc, params.FieldError):
        raise exc
    data = fallback()
    data[key], data[f"{key}_field"] = exc.message, getattr(exc, "field", None)
    return data, _shown_status(exc)


@router.get("/", response_class=HTMLResponse)
def home(request: Request, catalog: CatalogDep):
    urls = site_urls.for_request(request)
    return render(request, "home.html", pages.home_data(catalog), page_url=urls.home(), title="actscope")


@router.get("/{model}", response_class=HTMLResponse)
def model_page(request: Request, catalog: CatalogDep, model: str):
    urls = site_urls.for_request(request)
    data = pages.home_data(catalog, only=model)
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
    k: str = "5",
):
    """The try page; a bad k, like a bad source or text, is shown next to the form, which
    keeps what the visitor typed."""
    urls = site_urls.for_request(request)

    def count() -> int:
        value = params.parse_int("k", k, "a whole number")
        return 5 if value is None else value

    def without_text() -> dict[str, Any]:
        # The form as the visitor sent it: their source, unless the source is the error.
        try:
            data = try_data.try_data(store, live, urls, model, None, source=source)
        except AppError:
            data = try_data.try_data(store, live, urls, model, None)
        return {**data, "text": params.visitor_text(text), "k": 5}

    data, status = _or_shown_error(
        lambda: try_data.try_data(store, live, urls, model, text, pos=pos, k=count(), source=source), without_text
    )
    data["k_box"] = k
    return render(
        request,
        "try.html",
        data,
        page_url=_here(request),
        title=f"try · {model}",
        blocks={"try-result": "result"},
        status=status,
    )


async def search_page(
    request: Request,
    model: str,
    token: str | None = None,
    text: str | None = None,
    source: str | None = None,
    text_source: str | None = None,
    page: params.Page = 1,
    per_page: params.PerPage = search_data.PER_PAGE,
):
    served = request.app.state.catalog.served(model)
    args = (request, served.store, served.live, model, token, text, source, text_source, page, per_page)
    return await fast_route.answer(text is None and served.store.search_in_memory(model), _search_page, *args)


router.add_api_route(
    "/{model}/search",
    search_page,
    methods=["GET"],
    response_class=HTMLResponse,
    route_class_override=PlainParamsRoute,
    # FastAPI's path (a parameter it parses): an unknown model is a 404 before any 422, as before.
    dependencies=[Depends(get_store)],
)


def _search_page(request, store, live, model, token, text, source, text_source, page, per_page):
    urls = site_urls.for_request(request)
    errors: dict[str, AppError] = {}
    data = search_data.search_data(
        store, live, urls, model, token, text, source or None, text_source or None, page, per_page, errors=errors
    )
    data["errors"] = {part: exc.message for part, exc in errors.items()}
    status = max([_shown_status(exc) for exc in errors.values()], default=200)
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
    params.check_pos(pos, len(data["token_ids"]))
    data.update(source=source, index=index, pos=pos, acts=None, scale=1.0, live_error=None)
    if source is not None and index is not None:
        src = pages.get_source(store, model, source)
        pages.check_index(src, index)
        unit = store.unit(model, source, index)
        unit_view.tint_sequence(live, source, index, data, unit_view.scale_of(unit.stats) if unit else 1.0)
        attention_hook = kinds.get(src.kind).attention_hook(src.layer)
        if attention_hook is not None:  # a head: where the focus token attends
            head_view.attend_sequence(live, attention_hook, index, data)
    return render(
        request,
        "sequence.html",
        data,
        page_url=_here(request),
        title=f"sequence {seq} · {model}",
        blocks={"full-*": "tokens"},
    )


@router.get("/{model}/compare", response_class=HTMLResponse)
def compare_page(request: Request, catalog: CatalogDep, model: str, units: str | None = None):
    """Units side by side; bad units are shown next to the form, the text kept."""
    urls = site_urls.for_request(request)
    data = compare_data.compare_data(dict(catalog.stores()), urls, model, units, strict=False)
    status = 422 if data["error"] and units is not None else 200  # the empty form asks for nothing yet
    if units is None:
        data["error"] = None
    return render(
        request,
        "compare.html",
        data,
        page_url=_here(request),
        json_url=urls.api(urls.compare(model, data["units_text"] or None)),
        title=f"compare · {model}",
        status=status,
    )


TABLE_FIELDS = ("sort", "order", "page", "per_page", "q", "min_pct", "max_pct", "hide_dead", "goto")


@router.get("/{model}/{source}", response_class=HTMLResponse)
def source_page(request: Request, store: StoreDep, model: str, source: str):
    """The unit table. Its parameters are read as text (see TABLE_FIELDS): bad input is
    shown next to the form it came from, with the visitor's text kept in the boxes.
    `goto=N` (the "go to unit" box, as on unit pages) redirects to that unit's page."""
    urls = site_urls.for_request(request)
    raw = {f: request.query_params.get(f, "") for f in TABLE_FIELDS}
    query, errors = params.parse_table_query(raw)
    if raw["goto"].strip():
        src = pages.get_source(store, model, source)
        try:
            index = params.parse_int("goto", raw["goto"], "a unit number")
            if index is None or not 0 <= index < src.n_units:
                raise params.FieldError(
                    "goto", f"{src.slug} has units 0 to {src.n_units - 1:,}; there is no unit {index}."
                )
            return RedirectResponse(urls.unit(model, source, index), status_code=303)
        except params.FieldError as exc:
            errors["goto"] = exc.message
    data = pages.source_data(store, urls, model, source, query, errors=errors)
    typed = bool(errors.keys() & {"min_density", "max_density"})  # both were dropped: show them as typed
    data["form"] = {
        "q": raw["q"],
        "min_pct": raw["min_pct"] if typed else params.density_text(data["min_density"]),
        "max_pct": raw["max_pct"] if typed else params.density_text(data["max_density"]),
        "page": raw["page"] if "page" in data["errors"] else str(data["page"]),
        "goto": raw["goto"],
    }
    bad = data["errors"]
    data["form_errors"] = {
        "filters": [m for f, m in bad.items() if f not in ("page", "goto")],
        "page": [bad["page"]] if "page" in bad else [],
        "goto": [bad["goto"]] if "goto" in bad else [],
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
def random_unit(
    request: Request, store: StoreDep, model: str, source: str, dead: bool = False, text: str | None = None
):
    """A random unit that fired, or with `dead=1` one that never did."""
    index = pages.random_index(store, model, source, dead=dead)
    return RedirectResponse(site_urls.for_request(request).unit(model, source, index, text=text), status_code=302)


@dataclass(frozen=True)
class UnitState:
    """What a unit page's URL says beyond the unit: the example set, its page, the
    visitor's text and the expanded example (each as given, checked by pages.unit_data)."""

    band: str | None = None
    text: str | None = None
    page: str | None = None
    per_page: str | None = None
    open: str | None = None
    explain: str | None = None  # an attribution or minimal-example summary shown (explain_state)


async def unit_page(
    request: Request,
    model: str,
    source: str,
    index: int,
    band: str | None = None,
    text: str | None = None,
    page: str | None = None,
    per_page: str | None = None,
    open: str | None = None,
    goto: str | None = None,
    explain: str | None = None,
):
    # The hottest page reads app.state itself: two dependencies cost ~10% of a first
    # view (FastAPI resolves each per request).
    served = request.app.state.catalog.served(model)
    store, live = served.store, served.live
    state = UnitState(band, text, page, per_page, open, explain)
    if goto:  # an empty box asks for nothing
        return await run_in_threadpool(_jump, request, store, live, model, source, index, state, goto)
    from_memory = text is None and open is None and store.in_memory(model, source)
    return await fast_route.answer(from_memory, _unit_page, request, store, live, model, source, index, state)


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
    state: UnitState,
    with_full: bool = True,
) -> tuple[dict[str, Any], int]:
    """A unit page's data with the visitor's text, or without it and the error shown."""
    urls = site_urls.for_request(request)

    def unit(text: str | None) -> dict[str, Any]:
        return pages.unit_data(
            store,
            live,
            urls,
            model,
            source,
            index,
            band=state.band,
            text=text,
            page=state.page,
            per_page=state.per_page,
            open=state.open,
            explain=state.explain,
            shown_only=True,
            with_full=with_full,
        )

    return _or_shown_error(lambda: unit(state.text), lambda: {**unit(None), "text": state.text}, key="live_error")


def _unit_page(request, store, live, model, source, index, state: UnitState, jump: tuple[str, str] | None = None):
    # A cached page never gets here: CacheMiddleware serves it before routing.
    data, status = _unit_with_text(request, store, live, model, source, index, state)
    data["goto"], data["jump_error"] = jump or (None, None)
    if data["explain"] and data["explain"]["error"] and status == 200 and not request.headers.get("hx-request"):
        status = 422  # an explain= value the page cannot read: shown by the examples
    page = render(
        request,
        "unit.html",
        data,
        page_url=_here(request),
        title=f"{source}/{index} · {model}",
        status=422 if jump else status,
        blocks={"examples": "examples", "live-result": "live"},
    )
    return request.app.state.response_cache.put_for(request, page)


def _jump(request, store, live, model, source, index, state: UnitState, goto: str):
    """The "go to unit" box: the unit asked for (with the visitor's text), or this page
    with the error next to the box."""
    src = pages.get_source(store, model, source)
    pages.check_index(src, index)
    try:
        target = params.unit_number(goto, src.n_units)
    except AppError as exc:
        return _unit_page(request, store, live, model, source, index, state, jump=(goto, exc.message))
    url = site_urls.for_request(request).unit(model, source, target, text=state.text)
    return RedirectResponse(url, status_code=303)


@router.get("/{model}/{source}/{index}/similar", response_class=HTMLResponse)
def similar_page(
    request: Request, catalog: CatalogDep, model: str, source: str, index: int, scope: str = "all", k: str = "20"
):
    """A unit's neighbours; a bad scope or k is shown next to the form, the default list
    below it. An htmx request (the unit page's panel) gets the list's block only."""
    urls = site_urls.for_request(request)
    served = similar_data.served_models(catalog.stores())

    def view() -> dict[str, Any]:
        count = params.parse_int("k", k, "a whole number")
        return similar_data.similar_data(served, urls, model, source, index, scope, 20 if count is None else count)

    def fallback() -> dict[str, Any]:  # the list as the visitor asked for it, but for the bad field
        kept = scope if scope in similar_data.SCOPES else "all"
        return similar_data.similar_data(served, urls, model, source, index, kept)

    data, status = _or_shown_error(view, fallback)
    data["form"] = {"scope": scope, "k": k}
    return render(
        request,
        "similar.html",
        data,
        page_url=_here(request),
        json_url=urls.api(urls.similar(model, source, index, scope=data["scope"], k=data["k"])),
        title=f"like {source}/{index} · {model}",
        blocks={"neighbours": "neighbours"},
        status=200 if request.headers.get("hx-request") else status,
    )


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
    page: str | None = None,
    per_page: str | None = None,
    open: str | None = None,
):
    """The live block of a unit page (htmx); the shareable URL is pushed to the address bar."""
    share = site_urls.for_request(request).unit(
        model,
        source,
        index,
        band=band if band not in (None, "top") else None,
        page=page,
        per_page=per_page,
        open=open,
        text=text,
    )
    if not request.headers.get("hx-request"):
        return RedirectResponse(share, status_code=303)
    state = UnitState(band, text, page, per_page, open)
    data, status = _unit_with_text(request, store, live, model, source, index, state, with_full=False)
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


@router.get("/{model}/{source}/{index}/explain", response_class=HTMLResponse)
async def explain_page(request: Request, store: StoreDep, live: LiveDep, model: str, source: str, index: int):
    """What mattered at a focus token and the minimal example: a page with its form, or
    (htmx) the result block a unit page loads after itself. Computed in the live worker."""
    urls = site_urls.for_request(request)
    query = request.query_params

    async def compute() -> dict:
        asked = explain_data.parse_form(query)
        return await explain_data.explain_data(store, live, urls, model, source, index, **asked)

    data, status = await _live_result(compute, lambda: explain_data.unit_frame(store, urls, model, source, index))
    data.update(form=explain_data.form_values(query))
    return _render_live(
        request, "explain.html", data, f"What mattered · {source}/{index} · {model}", "explained", status
    )


@router.get("/{model}/{source}/{index}/minimal", response_class=HTMLResponse)
async def minimal_page(
    request: Request, store: StoreDep, live: LiveDep, model: str, source: str, index: int, threshold: str | None = None
):
    """The minimal examples of a unit's top examples and the line summing them up; htmx
    gets the line alone (a unit page loads it after itself)."""
    urls = site_urls.for_request(request)

    async def compute() -> dict:
        asked = explain_data.parse_form({"threshold": threshold or ""}).get("threshold")
        return await explain_data.minimal_data(store, live, urls, model, source, index, asked)

    data, status = await _live_result(compute, lambda: explain_data.unit_frame(store, urls, model, source, index))
    data.update(threshold_text=threshold or "")
    return _render_live(
        request, "minimal.html", data, f"Minimal examples · {source}/{index} · {model}", "summary", status
    )


async def _live_result(compute, frame) -> tuple[dict, int]:
    """(data with `error`, status) of a live page: what `compute` returns, or on bad input
    the unit's `frame` with the error (as _or_shown_error, for a computation awaited)."""
    try:
        data = await compute()
    except AppError as exc:
        return _shown_error(exc, frame)
    data["error"], data["error_field"] = None, None
    return data, 200


def _render_live(request: Request, template: str, data: dict, title: str, block: str, status: int):
    """A live page, or (htmx) its result block alone: htmx swaps 2xx answers only, so an
    error is shown inside the block and its status sent as X-Live-Status."""
    fragment = bool(request.headers.get("hx-request"))
    return render(
        request,
        template,
        data,
        page_url=_here(request),
        title=title,
        block=block if fragment else None,
        status=200 if fragment and status < 500 else status,
        headers={"X-Live-Status": str(status)} if fragment else None,
    )
