"""A regex hypothesis against a unit: its parameters, its plan, and its page data (the
test itself: app/hypothesis_run.py).

The unit runs live on a seeded random sample of the stored sequences and, as a second
stratum, on the sequences of its top examples (a sparse unit may not fire once in a
random sample). Every token but BOS (and the positions a kind leaves unmeasured) is
scored: matched by the regex (app/regex_match.py) or not, active (activation >
threshold) or not; app/hypothesis_figures.py gives precision, recall and ROC AUC, and
the disagreements shown as examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from actscope.app import limits, pages, params, regex_match
from actscope.app.errors import AppError, not_found, unavailable
from actscope.app.hypothesis_jobs import HypothesisJobs, Job
from actscope.app.hypothesis_run import DEFAULT_SEQUENCES, HypothesisQuery, Plan, Spent, run
from actscope.app.live_service import LiveService
from actscope.app.unit_view import scale_of
from actscope.indexer import kinds
from actscope.indexer.store.reader import Band, Store

MAX_SEQUENCES = 1024
MAX_SEED = 2**32 - 1
DEFAULT_QUANTILE = 0.99  # a dense unit's default threshold: the band edge at this quantile

FIELDS = ("regex", "threshold", "sequences", "seed")


def query_errors(query: HypothesisQuery) -> dict[str, str]:
    """What is wrong with a query, by field (the API and the page say the same)."""
    errors = {}
    try:
        regex_match.compile_pattern(query.regex)
    except regex_match.PatternError as exc:
        errors["regex"] = str(exc)
    if not 1 <= query.sequences <= MAX_SEQUENCES:
        errors["sequences"] = f"sequences must be between 1 and {MAX_SEQUENCES:,}, not {query.sequences}."
    if not 0 <= query.seed <= MAX_SEED:
        errors["seed"] = f"seed must be between 0 and {MAX_SEED:,}, not {query.seed}."
    if query.threshold is not None and not math.isfinite(query.threshold):
        errors["threshold"] = f"threshold must be a finite number, not {query.threshold}."
    return errors


def check_query(query: HypothesisQuery) -> None:
    """The API's check: the first error as a 422 naming its field."""
    errors = query_errors(query)
    if errors:
        field_name, message = next(iter(errors.items()))
        raise params.FieldError(field_name, message)


def parse_form(raw: Mapping[str, str]) -> tuple[HypothesisQuery | None, dict[str, str]]:
    """The page's fields as typed: (the query, or None without a regex; errors by field)."""
    errors: dict[str, str] = {}

    def number(name: str, default: int) -> int:
        text = raw.get(name, "").strip()
        if not text:
            return default
        if text.isascii() and text.isdigit():
            return int(text)
        errors[name] = f"{name} must be a whole number, not {text!r}."
        return default

    sequences = number("sequences", DEFAULT_SEQUENCES)
    seed = number("seed", 0)
    threshold = None
    text = raw.get("threshold", "").strip()
    if text:
        try:
            threshold = float(text)
        except ValueError:
            errors["threshold"] = f"threshold must be a number, not {text!r}."
    pattern = raw.get("regex")
    if pattern is None:
        return None, errors
    query = HypothesisQuery(pattern, sequences, seed, threshold)
    for name, message in query_errors(query).items():
        errors.setdefault(name, message)
    return query, errors


def default_threshold(sparse: bool, bands: list[Band]) -> float:
    """0 ("fires") for a sparse kind; else the unit's band edge nearest the 99th percentile."""
    if sparse or not bands:
        return 0.0
    return float(min(bands, key=lambda b: abs(b.q_lo - DEFAULT_QUANTILE)).lo)


def sample_sequences(n_sequences: int, wanted: int, seed: int) -> list[int]:
    """`wanted` distinct stored sequences drawn with `seed` (numpy's default_rng(seed)
    .choice without replacement), in order; all of them when there are fewer."""
    if wanted >= n_sequences:
        return list(range(n_sequences))
    return sorted(np.random.default_rng(seed).choice(n_sequences, size=wanted, replace=False).tolist())


def plan(store: Store, model: str, source: str, index: int, query: HypothesisQuery) -> Plan:
    """The test of `query` on a unit (404 for a unit the index lacks)."""
    info = pages.get_model(store, model)
    src = pages.get_source(store, model, source)
    pages.check_index(src, index)
    rec = store.unit(model, source, index, bands=())
    if rec is None:
        raise not_found(f"Unit {index} of {source} has no statistics in this index.")
    kind = kinds.get(src.kind)
    threshold = query.threshold if query.threshold is not None else default_threshold(kind.sparse, rec.bands)
    return Plan(
        model,
        source,
        index,
        query,
        threshold,
        sample_sequences(info.n_sequences, query.sequences, query.seed),
        list(dict.fromkeys(ex.seq for ex in rec.top)),
        info.ctx,
        kind.tail,
        scale_of(rec.stats),
    )


def start(store: Store, live: LiveService, jobs: HypothesisJobs, p: Plan) -> Job | dict[str, Any]:
    """The test's result if it is known, else its job (started, or the one running)."""
    found = jobs.result(p.key)
    if found is not None:
        return found
    if not live.enabled:
        raise unavailable("Live inference is switched off on this server: hypotheses cannot be tested.")
    spent = Spent()

    def before():
        # The client pays for the tokens the model will run (none when all are known).
        missing = [s for s in dict.fromkeys(p.sample + p.top) if jobs.acts.get((p.model, p.source, p.index, s)) is None]
        reservation = limits.reserve_live(len(missing) * p.ctx) if missing else None
        return lambda: reservation.settle(spent.tokens) if reservation is not None else None

    return jobs.start(p.key, lambda job: run(store, live, jobs, p, job, spent), before)


# -- page data -------------------------------------------------------------------------
def page_data(
    store: Store,
    live: LiveService,
    jobs: HypothesisJobs,
    model: str,
    source: str,
    index: int,
    raw: Mapping[str, str],
    poll: bool,
) -> tuple[dict[str, Any], int]:
    """(The hypothesis page's data, its status): the form as typed, the errors next to
    it, and the test's state: "form" (nothing asked, or bad input), "running" (with its
    progress), "done" (with its result) or "failed" (with the error)."""
    src = pages.get_source(store, model, source)
    pages.check_index(src, index)
    query, errors = parse_form(raw)
    data: dict[str, Any] = {
        "model": model,
        "source": pages.source_dict(src),
        "index": index,
        "form": {name: raw.get(name, "") for name in FIELDS},
        "errors": errors,
        "state": "form",
        "error": None,
        "result": None,
        "progress": None,
        "scale": 1.0,
        "query": None,
    }
    if query is None or errors:
        return data, 422 if errors else 200
    p = plan(store, model, source, index, query)
    data["scale"] = p.scale
    data["query"] = {
        "regex": query.regex,
        "sequences": query.sequences,
        "seed": query.seed,
        "threshold": query.threshold,
    }
    try:
        found: Job | dict[str, Any] | None = jobs.result(p.key)
        if found is None and poll:
            found = jobs.find(p.key)
        if found is None:
            found = start(store, live, jobs, p)
    except AppError as exc:
        data.update(state="failed", error=exc.message)
        return data, exc.status
    if isinstance(found, Job) and found.result is not None:
        found = found.result
    if isinstance(found, dict):
        data.update(state="done", result=found)
    elif found.error is not None:
        data.update(state="failed", error=found.error.message)
        if isinstance(found.error, params.FieldError):  # e.g. a regex too slow to match: shown at its box
            data.update(state="form", errors={found.error.field: found.error.message})
        return data, found.error.status
    else:
        data.update(state="running", progress={"stage": found.stage, "done": found.done, "total": found.total})
    return data, 200
