"""The data of an explanation (what mattered at a focus token, the minimal example) and
of the unit-level minimal-example summary: parameters checked, windows found, the
computation (app/explain.py) run in the live worker, the result as JSON-ready data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from actscope.app import pages
from actscope.app.errors import AppError
from actscope.app.explain import METHODS, Ablation, Explained, Target, Truncation, explain, truncate
from actscope.app.live_service import LiveService, clean_text
from actscope.app.params import FieldError, missing, visitor_text
from actscope.app.urls import URLs
from actscope.indexer import kinds
from actscope.indexer.store.reader import Store

DEFAULT_WINDOW = (24, 8)  # the indexer's default, for an index that does not record its own
MAX_DRAWS = 32
MAX_SIGMA = 100.0
SUMMARY_EXAMPLES = 20  # top examples the unit-level line sums up
NAME_WHAT = "Name what to explain: seq and pos (a stored example), or text (your own)."
BOTH_GIVEN = (
    "Give either seq and pos (a stored example) or text, not both: clear the sequence to explain your text, "
    "or the text to explain the stored example."
)


@dataclass(frozen=True)
class ExplainSettings:
    """An explanation's parameters (the URL's), checked; `bos`: the default baseline."""

    ablation: Ablation
    threshold: float
    bos: int

    def query(self) -> dict[str, Any]:
        """As query parameters, the defaults left out."""
        a = self.ablation
        out: dict[str, Any] = {}
        if a.method == "noise":
            out.update(method="noise", sigma=_num(a.sigma, 1.0), draws=a.draws if a.draws != 8 else None)
            out["seed"] = a.seed or None
        elif a.baseline != self.bos:
            out["baseline"] = a.baseline
        out["threshold"] = _num(self.threshold, 0.9)
        return out


def _num(value: float, default: float) -> str | None:
    return None if value == default else repr(value)  # repr: the shortest text that reads back the same


def window_of(store: Store) -> tuple[int, int]:
    """(positions before, after) the focus that the index's examples keep."""
    window = (store.meta.get("run_config") or {}).get("window")
    return (int(window[0]), int(window[1])) if window else DEFAULT_WINDOW


def check_settings(
    method: str | None,
    baseline: int | None,
    sigma: float | None,
    draws: int | None,
    seed: int | None,
    threshold: float | None,
    d_vocab: int,
    bos: int,
) -> ExplainSettings:
    method = method or "replace"
    if method not in METHODS:
        raise FieldError("method", f"method must be replace or noise, not {method!r}.")
    if baseline is not None and not 0 <= baseline < d_vocab:
        raise (missing if baseline >= 0 else FieldError)(
            "baseline", f"baseline must be a token id from 0 to {d_vocab - 1}, not {baseline}."
        )
    sigma = 1.0 if sigma is None else sigma
    if not 0 < sigma <= MAX_SIGMA:  # NaN fails too
        raise FieldError("sigma", f"sigma must be above 0 and at most {MAX_SIGMA:g}, not {sigma:g}.")
    draws = 8 if draws is None else draws
    if not 1 <= draws <= MAX_DRAWS:
        raise FieldError("draws", f"draws must be between 1 and {MAX_DRAWS}, not {draws}.")
    seed = 0 if seed is None else seed
    if not 0 <= seed < 2**32:
        raise FieldError("seed", f"seed must be between 0 and {2**32 - 1}, not {seed}.")
    threshold = 0.9 if threshold is None else threshold
    if not 0 < threshold <= 1:
        raise FieldError("threshold", f"threshold must be above 0 and at most 1, not {threshold:g}.")
    return ExplainSettings(Ablation(method, bos if baseline is None else baseline, sigma, draws, seed), threshold, bos)


@dataclass(frozen=True)
class Where:
    """The tokens an explanation reads and its window: ids from BOS, focus and window
    [start, end] as sequence positions."""

    ids: list[int]
    focus: int
    start: int
    end: int
    seq: int | None
    text: str | None


def stored_where(store: Store, model: str, tail: int, seq: int | None, pos: int | None) -> Where:
    info = pages.get_model(store, model)
    if seq is None or pos is None:
        # Nothing named to explain: a 422 on the page and the API alike.
        if seq is None and pos is None:
            raise FieldError("seq", NAME_WHAT)
        lacking = "pos" if seq is not None else "seq"
        raise FieldError(lacking, f"{lacking} is missing: give seq and pos (a stored example), or text (your own).")
    if seq < 0 or pos < 0:
        raise FieldError("seq" if seq < 0 else "pos", "seq and pos must be 0 or more.")
    if seq >= info.n_sequences:
        raise missing("seq", f"No sequence {seq}: sequences 0 to {info.n_sequences - 1}.")
    last = info.ctx - 1 - tail
    if not 1 <= pos <= last:
        raise missing("pos", f"pos must be a measured position, 1 to {last} (0 is BOS), not {pos}.")
    ids = store.sequence(model, seq)
    if ids is None:
        raise missing("seq", f"No sequence {seq} in the index of {model!r}.")
    return _window(store, ids, pos, tail, seq, None)


def text_where(store: Store, live: LiveService, tail: int, text: str, pos: int | None) -> Where:
    try:
        text, _ = clean_text(text, live.max_chars)
    except AppError as exc:  # said at the text box
        raise FieldError("text", exc.message) from None
    ids, _ = live.load().tokenize(text)
    last = len(ids) - 1 - tail
    if last < 1:
        raise FieldError(
            "text", "The text is too short: it needs a token to explain" + (" and one after it." if tail else ".")
        )
    if pos is None:
        pos = last
    elif pos < 0:
        raise FieldError("pos", "pos must be 0 or more.")
    elif not 1 <= pos <= last:
        raise missing("pos", f"pos must be a measured position of the text, 1 to {last} (0 is BOS), not {pos}.")
    return _window(store, ids, pos, tail, None, text)


def _window(store: Store, ids: list[int], pos: int, tail: int, seq: int | None, text: str | None) -> Where:
    before, after = window_of(store)
    start = max(0, pos - before)
    end = min(pos + after, len(ids) - 1 - tail)
    return Where(ids, pos, start, end, seq, text)


async def explain_data(
    store: Store,
    live: LiveService,
    urls: URLs,
    model: str,
    source: str,
    index: int,
    *,
    seq: int | None = None,
    pos: int | None = None,
    text: str | None = None,
    method: str | None = None,
    baseline: int | None = None,
    sigma: float | None = None,
    draws: int | None = None,
    seed: int | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """What mattered at the focus (ablation of each window token up to it) and the
    minimal example: of a stored example (`seq`, `pos`) or of `text` (focus: its last
    measured token, or `pos`)."""
    info = pages.get_model(store, model)
    src = pages.get_source(store, model, source)
    pages.check_index(src, index)
    tail = kinds.get(src.kind).tail
    settings = check_settings(method, baseline, sigma, draws, seed, threshold, info.d_vocab, info.bos_token_id)
    if text is not None and seq is not None:
        raise FieldError("text", BOTH_GIVEN)
    if text is not None:
        where = await run_in_threadpool(text_where, store, live, tail, text, pos)
    else:
        where = await run_in_threadpool(stored_where, store, model, tail, seq, pos)
    target = Target(source, index, tuple(where.ids[: where.focus + 1 + tail]), where.focus, max(1, where.start))
    a, t = settings.ablation, settings.threshold
    key = ("explain", source, index, target.ids, target.focus, target.first, a, t)
    cost = target.ablation_tokens(a, tail) + target.truncation_tokens(tail)
    done: Explained = await live.atask(key, cost, lambda m: explain(m, target, a, t))
    return payload(store, urls, model, source, index, where, settings, done)


def payload(
    store: Store,
    urls: URLs,
    model: str,
    source: str,
    index: int,
    where: Where,
    settings: ExplainSettings,
    done: Explained,
) -> dict[str, Any]:
    window = where.ids[where.start : where.end + 1]
    ablated: list[float | None] = []
    for p in range(where.start, where.end + 1):
        ablated.append(done.ablated[p - max(1, where.start)] if 1 <= p <= where.focus else None)
    truncation = None
    if done.truncation_start is not None:
        cut = where.ids[done.truncation_start : where.focus + 1]
        truncation = {
            "start": done.truncation_start,
            "tokens": store.token_strings(model, cut),
            "token_ids": cut,
            "act": done.truncation_act,
            "threshold": settings.threshold,
        }
    a = settings.ablation
    state = (
        {"seq": where.seq, "pos": where.focus} if where.seq is not None else {"text": where.text, "pos": where.focus}
    )
    return {
        "model": model,
        "source": source,
        "index": index,
        "seq": where.seq,
        "pos": where.focus,
        "text": where.text,
        "method": a.method,
        "sigma": a.sigma if a.method == "noise" else None,
        "draws": a.draws if a.method == "noise" else None,
        "seed": a.seed if a.method == "noise" else None,
        "baseline_token_id": a.baseline if a.method == "replace" else None,
        "tokens": store.token_strings(model, window),
        "token_ids": window,
        "token_bytes": store.token_hex(model, window),
        "start": where.start,
        "focus": where.focus - where.start,
        "act": done.act,
        "ablated": ablated,
        "delta": [None if v is None else done.act - v for v in ablated],
        "truncation": truncation,
        "threshold": settings.threshold,
        "url": urls.explain(model, source, index, **state, **settings.query()),
        "unit_url": urls.unit(model, source, index),
    }


async def minimal_data(
    store: Store, live: LiveService, urls: URLs, model: str, source: str, index: int, threshold: float | None = None
) -> dict[str, Any]:
    """The minimal example of each of the unit's top examples (up to SUMMARY_EXAMPLES),
    and the line that sums them up: "<= L tokens keep >= 90% for n of N"."""
    info = pages.get_model(store, model)
    src = pages.get_source(store, model, source)
    pages.check_index(src, index)
    tail = kinds.get(src.kind).tail
    settings = check_settings(None, None, None, None, None, threshold, info.d_vocab, info.bos_token_id)
    rec = await run_in_threadpool(store.unit, model, source, index, ())
    top = (rec.top if rec is not None else [])[:SUMMARY_EXAMPLES]
    wheres = [await run_in_threadpool(stored_where, store, model, tail, ex.seq, ex.pos) for ex in top]
    targets = [Target(source, index, tuple(w.ids[: w.focus + 1 + tail]), w.focus, max(1, w.start)) for w in wheres]
    t = settings.threshold
    cost = sum(tg.truncation_tokens(tail) for tg in targets)
    key = ("minimal", source, index, tuple((tg.ids, tg.focus, tg.first) for tg in targets), t)
    found: list[Truncation] = await live.atask(key, cost, lambda m: [truncate(m, tg, t) for tg in targets])
    examples: list[dict[str, Any]] = []
    for ex, where, cut in zip(top, wheres, found):
        ids = where.ids[cut.start : where.focus + 1] if cut.start is not None else []
        window = where.ids[where.start : where.end + 1]
        examples.append(
            {
                "seq": ex.seq,
                "pos": ex.pos,
                "act": cut.full,
                "start": where.start,
                "token_ids": window,
                "focus": where.focus - where.start,
                "truncation": None
                if cut.start is None
                else {
                    "start": cut.start,
                    "tokens": store.token_strings(model, ids),
                    "token_ids": ids,
                    "act": cut.act,
                    "threshold": t,
                },
                "url": urls.explain(model, source, index, seq=ex.seq, pos=ex.pos),
            }
        )
    lengths = [ex.pos - cut.start + 1 for ex, cut in zip(top, found) if cut.start is not None]
    return {
        "model": model,
        "source": source,
        "index": index,
        "threshold": t,
        "n_examples": len(examples),
        "n_found": len(lengths),
        "max_tokens": max(lengths) if lengths else None,
        "examples": examples,
        "url": urls.minimal(model, source, index, threshold=settings.query()["threshold"]),
        "unit_url": urls.unit(model, source, index),
    }


# -- the pages: form values, and the unit page's `explain` state ---------------------------
FORM_INTS = ("seq", "pos", "baseline", "draws", "seed")
NUMBER = re.compile(r"-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\Z")  # as JSON writes one (float() takes more)
FORM_FLOATS = ("sigma", "threshold")
FORM_FIELDS = ("seq", "pos", "text", "method", *FORM_INTS[2:], *FORM_FLOATS)


def form_values(query: Mapping[str, str]) -> dict[str, str]:
    """The explain form's fields as the visitor gave them (to show them again)."""
    return {name: query.get(name, "") for name in FORM_FIELDS}


def parse_form(query: Mapping[str, str]) -> dict[str, Any]:
    """explain_data's keyword arguments from a page's query (empty: the default)."""
    args: dict[str, Any] = {}
    for name in FORM_INTS:
        raw = query.get(name, "")
        if raw:
            if not (raw.isascii() and raw.isdigit()):
                raise FieldError(name, f"{name} must be a whole number, 0 or more, not {raw!r}.")
            args[name] = int(raw)
    for name in FORM_FLOATS:
        raw = query.get(name, "")
        if raw:
            if not NUMBER.match(raw):
                raise FieldError(name, f"{name} must be a number, not {raw!r}.")
            args[name] = float(raw)
    text = query.get("text")
    if text:
        args["text"] = visitor_text(text)
    if query.get("method"):
        args["method"] = query["method"]
    return args


def unit_frame(store: Store, urls: URLs, model: str, source: str, index: int) -> dict[str, Any]:
    """What the explanation pages show of the unit without a result (404: no such unit)."""
    src = pages.get_source(store, model, source)
    pages.check_index(src, index)
    return {"model": model, "source": source, "index": index, "unit_url": urls.unit(model, source, index)}
