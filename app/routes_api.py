"""The JSON API under /api: the same data as the pages, documented at /docs."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from actscope.app import (
    compare_data,
    explain_data,
    fast_route,
    limits,
    live_data,
    pages,
    params,
    schemas,
    search_data,
    similar_data,
    try_data,
)
from actscope.app import urls as site_urls
from actscope.app.deps import CatalogDep, LiveDep, StoreDep, get_store
from actscope.app.errors import not_found
from actscope.app.fast_route import PlainParamsRoute

Responses = dict[int | str, dict[str, Any]]

# Every status a route answers besides its success, each in the one error shape.
ERRORS: Responses = {
    404: {
        "model": schemas.ErrorOut,
        "description": "Unknown model, source, unit or sequence, or a page, band or position past the last one",
    },
    422: {"model": schemas.ErrorOut, "description": "Invalid input: a parameter outside what the schema allows"},
}
LIVE_ERRORS: Responses = {
    **ERRORS,
    503: {"model": schemas.ErrorOut, "description": "Live inference busy or unavailable"},
    **limits.OVER_BUDGET,
}
BODY_ERRORS: Responses = {
    **LIVE_ERRORS,
    400: {"model": schemas.ErrorOut, "description": "The body is not JSON"},
}

router = APIRouter(prefix="/api", tags=["api"])


class JSON(JSONResponse):
    """Page data is already JSON-ready: serialise it directly (orjson, ~15x faster than
    json on unit pages), skipping FastAPI's encoder. A JSONResponse, so the OpenAPI
    document gives its 200 the route's schema (another class documents a string)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _doc(model: Any, errors: Responses = ERRORS) -> dict[str, Any]:
    return {"response_class": JSON, "responses": {200: {"model": model}, **errors}}


@router.get("", summary="Models and their sources", **_doc(schemas.HomeOut))
def api_home(catalog: CatalogDep):
    return JSON(pages.home_data(catalog))


@router.get("/{model}", summary="One model and its sources", **_doc(schemas.ModelOut))
def api_model(catalog: CatalogDep, model: params.ModelName):
    return JSON(pages.served_model_dict(catalog, catalog.served(model)))


@router.get("/{model}/sequences/{seq}", summary="The exact token ids of a corpus sequence", **_doc(schemas.SequenceOut))
def api_sequence(store: StoreDep, model: params.ModelName, seq: params.SequenceNumber):
    return JSON(pages.sequence_data(store, model, seq))


@router.post(
    "/{model}/activations",
    summary="Run the model on text (live inference)",
    responses={200: {"model": schemas.LiveUnitOut | schemas.LiveTopOut}, **BODY_ERRORS, **limits.BODY_TOO_LARGE},
    response_class=JSON,
)
async def api_activations(
    request: Request, store: StoreDep, live: LiveDep, model: params.ModelName, body: schemas.ActivationsIn
):
    """With `index`: that unit's activation on every token (BOS first).
    Without: for every token, the `k` units of the source that fire most."""
    params.check_k(body.k)
    if body.index is not None:
        # Lookups are in memory; the model runs in the live worker, awaited here.
        info = pages.get_model(store, model)
        src = pages.get_source(store, model, body.source)
        pages.check_index(src, body.index)
        res = await live.arun(body.text, body.source)
        hexes = store.token_hex(model, res.token_ids)
        return JSON(live_data.unit_payload(res, model, body.source, body.index, info.ctx, hexes))
    urls = site_urls.for_request(request)
    return await run_in_threadpool(
        lambda: JSON(pages.live_top_data(live, store, urls, model, body.source, body.text, k=body.k))
    )


@router.get(
    "/{model}/try",
    summary="Top units of every source per token of a text (the try page)",
    **_doc(schemas.TryOut, LIVE_ERRORS),
)
def api_try(
    request: Request,
    store: StoreDep,
    live: LiveDep,
    model: params.ModelName,
    text: params.Text,
    source: Annotated[str | None, Query(description="The source whose activations colour the tokens")] = None,
    pos: params.Pos = None,
    k: params.K = 5,
):
    """For each source of the model but control ones: the `k` units firing most on
    every token of the text, and over all of it."""
    data = try_data.try_data(store, live, site_urls.for_request(request), model, text, pos=pos, k=k, source=source)
    return JSON(data["live"])


async def api_search(
    request: Request,
    model: params.ModelName,
    token: Annotated[
        str | None,
        Query(description="A token: matched with and without a leading space (space, Ġ or ▁), in any case"),
    ] = None,
    source: Annotated[str | None, Query(description="Token search in this source only (default: every source)")] = None,
    page: params.Page = 1,
    per_page: params.PerPage = search_data.PER_PAGE,
    text: params.SearchText = None,
    text_source: Annotated[
        str | None, Query(description="The source the text search ranks (default: the first)")
    ] = None,
):
    """`token`: units whose top examples focus on the token, most such examples first,
    then by activation, one page of them. `text`: the units of `text_source` with the
    largest activation on the text (`live`). Either or both."""
    served = request.app.state.catalog.served(model)
    args = (request, served.store, served.live, model, token, text, source, text_source, page, per_page)
    return await fast_route.answer(text is None and served.store.search_in_memory(model), _api_search, *args)


router.add_api_route(
    "/{model}/search",
    api_search,
    methods=["GET"],
    summary="Units by focus token, or ranked by activation on a text",
    route_class_override=PlainParamsRoute,
    **_doc(schemas.SearchOut, LIVE_ERRORS),
    # FastAPI's path (a parameter it parses): an unknown model is a 404 before any 422, as before.
    dependencies=[Depends(get_store)],
)


def _api_search(request, store, live, model, token, text, source, text_source, page, per_page):
    urls = site_urls.for_request(request)
    return JSON(
        search_data.search_data(
            store, live, urls, model, token, text, source or None, text_source or None, page, per_page
        )
    )


@router.get(
    "/{model}/compare", summary="Units side by side, with their shared focus tokens", **_doc(schemas.CompareOut)
)
def api_compare(
    request: Request,
    catalog: CatalogDep,
    model: params.ModelName,
    units: Annotated[
        str,
        Query(
            description="Two to 8 units, comma-separated: source/index, or model:source/index for a unit of "
            "another model served here. A unit the index lacks is a 404; one listed twice, a 422",
            json_schema_extra={"pattern": compare_data.UNITS_PATTERN},  # checked below, with a message per unit
        ),
    ],
):
    """Each unit's statistics, histogram and top examples, and the overlap of their top
    examples' focus tokens (seq, pos): per pair of units of one model, and in all."""
    stores = dict(catalog.stores())
    return JSON(compare_data.compare_data(stores, site_urls.for_request(request), model, units, strict=True))


@router.get(
    "/{model}/reservoir", summary="The positions every unit's fingerprint is taken at", **_doc(schemas.ReservoirOut)
)
def api_reservoir(store: StoreDep, model: params.ModelName):
    """The reservoir: `n` corpus positions (seq, pos) drawn from `seed`, the same for every
    source; slot i of a fingerprint is the unit's activation at positions[i]. With the
    stored fingerprints (the index's `fingerprints` table) a script can recompute every
    correlation."""
    info = pages.get_model(store, model)
    reservoir = store.reservoir(info.model)
    if reservoir is None:
        raise not_found(f"The index of {model} has no fingerprints (it was built with --reservoir 0).")
    return JSON(
        {
            "model": model,
            "n": reservoir.n,
            "capacity": reservoir.capacity,
            "seed": reservoir.seed,
            "positions": reservoir.positions(),
        }
    )


@router.get(
    "/{model}/{source}", summary="A source's units: sortable, filterable, paginated", **_doc(schemas.SourceTableOut)
)
def api_source(
    request: Request,
    store: StoreDep,
    model: params.ModelName,
    source: params.SourceSlug,
    sort: params.Sort = "max",
    order: params.Order = "desc",
    page: params.Page = 1,
    per_page: params.PerPage = 50,
    q: params.TableText = "",
    min_density: params.MinDensity = None,
    max_density: params.MaxDensity = None,
    hide_dead: params.HideDead = None,
):
    """Densities are fractions of the indexed tokens here (the pages' form takes
    percentages). `n_dead` counts the source's dead units; `columns` lists the columns
    that apply to it (and can be sorted by)."""
    query = params.TableQuery(sort, order, page, per_page, q, min_density, max_density, hide_dead)
    return JSON(pages.source_data(store, site_urls.for_request(request), model, source, query))


@router.get(
    "/{model}/{source}/random",
    summary="Redirect to a random unit",
    status_code=302,
    response_class=JSON,
    responses={
        302: {
            "model": schemas.RandomOut,
            "description": "The unit's JSON URL in `Location`, and the unit in the body",
            "headers": {"Location": {"description": "The unit's URL under /api", "schema": {"type": "string"}}},
        },
        **ERRORS,
    },
)
def api_random(
    request: Request,
    store: StoreDep,
    model: params.ModelName,
    source: params.SourceSlug,
    dead: Annotated[
        bool, Query(description="Pick among the dead units (never fired on an indexed token) instead of the live ones")
    ] = False,
):
    """A random unit that fired on some indexed token; with `dead=1`, one that never did
    (404 if the source has none)."""
    index = pages.random_index(store, model, source, dead=dead)
    urls = site_urls.for_request(request)
    url = urls.api(urls.unit(model, source, index))
    # A body too, so a client that does not follow redirects reads the unit without parsing Location.
    body = {"model": model, "source": source, "index": index, "url": url}
    return JSON(body, status_code=302, headers={"Location": url})


@router.get(
    "/{model}/{source}/export.{fmt}",
    summary="Bulk export of a whole source",
    response_class=StreamingResponse,  # no JSON 200: Parquet or JSON lines only
    responses={200: {"content": {"application/vnd.apache.parquet": {}, "application/x-ndjson": {}}}, **ERRORS},
)
def api_export(store: StoreDep, model: params.ModelName, source: params.SourceSlug, fmt: params.ExportFormat):
    """Every unit of the source with its statistics, bands, examples and logit effects,
    one row per unit, as Parquet (`export.parquet`) or JSON lines (`export.jsonl`).
    Streamed as it is read, a few hundred units at a time."""
    pages.get_source(store, model, source)
    if fmt not in ("parquet", "jsonl"):
        raise not_found(f"No export format {fmt!r}: use export.parquet or export.jsonl.")
    media = "application/vnd.apache.parquet" if fmt == "parquet" else "application/x-ndjson"
    filename = quote(f"{model}-{source}.{fmt}")
    disposition = (
        f"attachment; filename*=utf-8''{filename}" if "%" in filename else f'attachment; filename="{filename}"'
    )
    # A sync iterator: Starlette asks for each piece in the threadpool (DuckDB off the loop).
    return StreamingResponse(
        store.export_chunks(model, source, fmt),
        media_type=media,
        headers={"Content-Disposition": disposition},
    )


EXPLAIN_ERRORS: Responses = {
    **LIVE_ERRORS,
    404: {
        "model": schemas.ErrorOut,
        "description": "Unknown model, source, unit or sequence; a position that is BOS or past the last measured "
        "one; or a baseline past the vocabulary",
    },
    422: {
        "model": schemas.ErrorOut,
        "description": "Invalid input: a parameter outside what the schema allows, nothing named to explain "
        "(seq and pos, or text), or both a stored example and a text",
    },
}


@router.get(
    "/{model}/{source}/{index}/explain",
    summary="What mattered at a focus token: ablation attribution and the minimal example (live)",
    **_doc(schemas.ExplainOut, EXPLAIN_ERRORS),
)
async def api_explain(
    request: Request,
    store: StoreDep,
    live: LiveDep,
    model: params.ModelName,
    source: params.SourceSlug,
    index: params.UnitIndex,
    seq: params.ExplainSeq = None,
    pos: params.ExplainPos = None,
    text: params.ExplainText = None,
    method: params.ExplainMethod = None,
    baseline: params.ExplainBaseline = None,
    sigma: params.ExplainSigma = None,
    draws: params.ExplainDraws = None,
    seed: params.ExplainSeed = None,
    threshold: params.ExplainThreshold = None,
):
    """A stored example (`seq`, `pos`) or a text (focus: its last measured token, or
    `pos`), in the window the index keeps around a focus. For each window token from the
    window's start up to the focus (never BOS): the focus activation with that token
    ablated (`ablated`) and `delta` = act - ablated; null elsewhere. `replace` swaps the
    token for `baseline` (default the model's BOS/EOS id); `noise` adds Gaussian noise
    at `hook_embed` (sigma times the per-dimension std of W_E's rows), averaged over
    `draws` seeded draws. `truncation`: the shortest suffix ending at the focus (BOS
    prepended) whose focus activation keeps `threshold` of `act`, or null."""
    raw = {"seq": seq, "pos": pos, "text": text, "method": method, "baseline": baseline}
    raw.update(sigma=sigma, draws=draws, seed=seed, threshold=threshold)
    args = explain_data.parse_form({k: v for k, v in raw.items() if v is not None})
    urls = site_urls.for_request(request)
    return JSON(await explain_data.explain_data(store, live, urls, model, source, index, **args))


@router.get(
    "/{model}/{source}/{index}/minimal",
    summary="The minimal example of each of a unit's top examples, summed up (live)",
    **_doc(schemas.MinimalOut, LIVE_ERRORS),
)
async def api_minimal(
    request: Request,
    store: StoreDep,
    live: LiveDep,
    model: params.ModelName,
    source: params.SourceSlug,
    index: params.UnitIndex,
    threshold: params.ExplainThreshold = None,
):
    """For each of the unit's first 20 top examples: the shortest suffix ending at its
    focus (BOS prepended, starting in its window) that keeps `threshold` of its focus
    activation. `n_found` of `n_examples` have one, the longest `max_tokens` long."""
    asked = explain_data.parse_form({"threshold": threshold or ""}).get("threshold")
    urls = site_urls.for_request(request)
    return JSON(await explain_data.minimal_data(store, live, urls, model, source, index, asked))


async def api_unit(
    request: Request,
    model: params.ModelName,
    source: params.SourceSlug,
    index: params.UnitIndex,
    text: params.UnitText = None,
    band: params.UnitBand = None,
    page: params.UnitPage = None,
    per_page: params.UnitPerPage = None,
    open: params.UnitOpen = None,
):
    """`text` adds `live`: the unit's activation on every token of that text. `band`
    (`top` or a band number), `page` (from 1) and `per_page` (1 to 200, default 20) say
    which slice of a stored example set the page shows (`shown`); `open` (`SEQ:POS`) the
    expanded example."""
    # The hottest route reads app.state itself: two dependencies cost ~10% of a
    # first view (FastAPI resolves each per request).
    served = request.app.state.catalog.served(model)
    store, live = served.store, served.live
    args = (request, store, live, model, source, index, text, band, page, per_page, open)
    return await fast_route.answer(text is None and store.in_memory(model, source), _api_unit, *args)


router.add_api_route(
    "/{model}/{source}/{index}",
    api_unit,
    methods=["GET"],
    summary="A unit: statistics, examples, bands, logits",
    route_class_override=PlainParamsRoute,
    **_doc(schemas.UnitOut, LIVE_ERRORS),
)


def _api_unit(request, store, live, model, source, index, text, band, page, per_page, open):
    # A cached answer never gets here: CacheMiddleware serves it before routing.
    urls = site_urls.for_request(request)
    corpus = request.app.state.corpus_json.get(model)
    data = pages.unit_data(
        store,
        live,
        urls,
        model,
        source,
        index,
        band=band,
        text=text,
        page=page,
        per_page=per_page,
        open=open,
        as_json=corpus.example_sets if corpus is not None else None,
    )
    return request.app.state.response_cache.put_for(request, JSON(data))


Scope = Annotated[
    str,
    Query(
        description="Where neighbours are looked for: this source, every source of the model, or also the other "
        "models served here whose reservoirs line up (all)",
        json_schema_extra={"enum": list(similar_data.SCOPES)},
    ),
]
SimilarK = Annotated[
    int, Query(description="Neighbours per list", json_schema_extra={"minimum": 1, "maximum": similar_data.MAX_K})
]


@router.get(
    "/{model}/{source}/{index}/similar",
    summary="Units like this one: neighbours by fingerprint correlation (and decoder cosine)",
    **_doc(schemas.SimilarOut),
)
def api_similar(
    request: Request,
    catalog: CatalogDep,
    model: params.ModelName,
    source: params.SourceSlug,
    index: params.UnitIndex,
    scope: Scope = "all",
    k: SimilarK = 20,
):
    """The `k` units whose fingerprints (activations on the reservoir) correlate most
    with this unit's (Pearson r), largest first: only units active on at least 8 of the
    reservoir's positions and not constant there have one (else `note` says why and
    `similar` is empty). The unit's direct-effect twin, the same unit at other hooks and
    control sources are left out. Other models served here are compared with `scope=all`
    when their reservoirs line up (`models` says why one does not). SAE features also
    list `decoder_cosine`."""
    served = similar_data.served_models(catalog.stores())
    return JSON(similar_data.similar_data(served, site_urls.for_request(request), model, source, index, scope, k))
