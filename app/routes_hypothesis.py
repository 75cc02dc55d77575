"""A regex hypothesis against a unit: the JSON route (awaits the test) and the page
(shows its progress and asks again, by htmx or by a refresh without JavaScript)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BeforeValidator
from starlette.concurrency import run_in_threadpool

from actscope.app import hypothesis_data, hypothesis_run, params, schemas
from actscope.app import urls as site_urls
from actscope.app.deps import LiveDep, StoreDep
from actscope.app.errors import unavailable
from actscope.app.regex_match import MAX_PATTERN_CHARS
from actscope.app.routes_api import JSON, LIVE_ERRORS
from actscope.app.routes_html import render

api_router = APIRouter(prefix="/api", tags=["api"])
router = APIRouter(include_in_schema=False)

# The API's parameters (the page reads the same fields as text: hypothesis_data.parse_form).
Regex = Annotated[
    str,
    Query(
        description="A Python regular expression (re). A token is matched when a non-empty match ends in its "
        "text (the match's last character, m.end() - 1); sequences are decoded without BOS, special tokens "
        "as nothing. An invalid pattern, or one that takes over "
        f"{hypothesis_run.MATCH_TIME_LIMIT_S:g} s to match the sample, is a 422",
        min_length=1,
        max_length=MAX_PATTERN_CHARS,
        json_schema_extra={"format": "regex"},
    ),
]
Sequences = Annotated[
    int,
    Query(
        description="Stored sequences to test on, drawn at random with `seed` (all of them when the index has fewer)",
        json_schema_extra={"minimum": 1, "maximum": hypothesis_data.MAX_SEQUENCES},
    ),
]
Seed = Annotated[
    int,
    Query(
        description="Seed of the random sample (numpy default_rng(seed).choice without replacement)",
        json_schema_extra={"minimum": 0, "maximum": hypothesis_data.MAX_SEED},
    ),
]


def _blank_is_none(value: object) -> object:
    return None if value == "" else value


Threshold = Annotated[
    float | None,
    BeforeValidator(_blank_is_none),
    Query(
        description="Active means activation > threshold. Empty: the unit's default, its 99th-percentile band "
        "edge (0 for a sparse kind such as SAE features)",
        json_schema_extra={"anyOf": [{"type": "number"}, {"type": "string", "maxLength": 0}]},
    ),
]


@api_router.get(
    "/{model}/{source}/{index}/hypothesis",
    summary="Test a regex hypothesis against a unit (live)",
    response_class=JSON,
    responses={200: {"model": schemas.HypothesisOut}, **LIVE_ERRORS},
)
async def api_hypothesis(
    request: Request,
    store: StoreDep,
    live: LiveDep,
    model: params.ModelName,
    source: params.SourceSlug,
    index: params.UnitIndex,
    regex: Regex,
    sequences: Sequences = hypothesis_data.DEFAULT_SEQUENCES,
    seed: Seed = 0,
    threshold: Threshold = None,
):
    """Precision, recall and ROC AUC of the regex as an explanation of the unit, over a
    seeded random sample of stored sequences run live, and over the sequences of the
    unit's top examples (`top_examples`); the tokens where they disagree most, as
    examples. The answer comes when the test has run (results are kept: the same query
    again is immediate)."""
    query = hypothesis_data.HypothesisQuery(regex, sequences, seed, threshold)
    hypothesis_data.check_query(query)
    jobs = request.app.state.hypotheses

    def begin():
        p = hypothesis_data.plan(store, model, source, index, query)
        return hypothesis_data.start(store, live, jobs, p)

    found = await run_in_threadpool(begin)
    if isinstance(found, dict):
        return JSON(found)
    if not await found.wait(hypothesis_run.TIME_LIMIT_S + live.timeout_s):
        raise unavailable("The hypothesis test is still running; ask again in a moment (its result is kept).")
    if found.error is not None:
        raise found.error
    return JSON(found.result)


@router.get("/{model}/{source}/{index}/hypothesis")
def hypothesis_page(request: Request, store: StoreDep, live: LiveDep, model: str, source: str, index: int):
    """The test's page: the form (errors next to it), then the test's progress or its
    figures and examples. `poll=1` (the page asking for its progress) never restarts a
    test that failed a moment ago: it shows why."""
    raw = {name: request.query_params.get(name) for name in hypothesis_data.FIELDS}
    typed = {name: value for name, value in raw.items() if value is not None}
    poll = request.query_params.get("poll") == "1"
    data, status = hypothesis_data.page_data(
        store, live, request.app.state.hypotheses, model, source, index, typed, poll
    )
    urls = site_urls.for_request(request)
    shown = {name: typed.get(name) or None for name in hypothesis_data.FIELDS}
    data["page_url"] = urls.unit_hypothesis(model, source, index, **shown)
    data["poll_url"] = urls.unit_hypothesis(model, source, index, **shown, poll=1)
    data["unit_url"] = urls.unit(model, source, index)
    htmx = bool(request.headers.get("hx-request"))
    return render(
        request,
        "hypothesis.html",
        data,
        page_url=data["page_url"],
        title=f"hypothesis · {source}/{index} · {model}",
        blocks={"hypothesis-result": "result"},
        # htmx swaps 2xx answers only: its block carries the error with a 200.
        status=200 if htmx else status,
    )
