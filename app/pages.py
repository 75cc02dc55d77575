"""The data behind every page: one function per page, used by the HTML and JSON routes.

Each function returns plain JSON-ready data (dicts, lists, numbers, strings). Templates
render it; the API serialises it unchanged (data first, rendering second). URLs in it
are built by the `urls` builder of the request, so they carry the site's base path.
Errors are AppError (404/422/503).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import replace
from itertools import chain, islice
from typing import Any

import numpy as np

from actscope.app import explain_state, head_view, index_record, live_data, params, unit_refs, unit_view
from actscope.app.catalog import Catalog, ServedModel
from actscope.app.errors import not_found
from actscope.app.live_service import LiveService
from actscope.app.urls import URLs
from actscope.indexer import kinds
from actscope.indexer.store.reader import Example, ModelInfo, SourceInfo, Store, UnitStats
from actscope.indexer.store.unit_table import UnitTable


# -- lookups --------------------------------------------------------------------------
def get_model(store: Store, model: str) -> ModelInfo:
    info = store.model(model)
    if info is None:
        known = ", ".join(m.model for m in store.models())
        raise not_found(f"No model {model!r} in this index (it holds: {known}).")
    return info


def get_source(store: Store, model: str, source: str) -> SourceInfo:
    get_model(store, model)
    info = store.source(model, source)
    if info is None:
        known = ", ".join(s.slug for s in store.sources(model))
        raise not_found(f"No source {source!r} for model {model!r} (sources: {known}).")
    return info


def twin_source(store: Store, model: str, src: SourceInfo) -> SourceInfo | None:
    """The source holding the same units ranked another way (a --dla twin and the source
    it is the twin of), if the index has it."""
    of = kinds.twin_of(src.kind, src.spec)
    if of is not None:
        return store.source(model, of)
    return next((s for s in store.sources(model) if kinds.twin_of(s.kind, s.spec) == src.slug), None)


def examples_by(s: SourceInfo) -> str:
    """What a source's examples are ranked by (its kind says)."""
    return kinds.KINDS[s.kind].examples_by if s.kind in kinds.KINDS else "activation"


def stats_dict(st: UnitStats) -> dict[str, Any]:
    """A unit's statistics as the pages and the JSON give them."""
    return {
        "max": st.max,
        "min": st.min,
        "mean": st.mean,
        "std": st.std,
        "density": st.density,
        "n_tokens": st.n_tokens,
        "n_fired": st.n_fired,
        "histogram": {"edges": st.hist_edges, "counts": st.hist_counts},
    }


def source_dict(s: SourceInfo) -> dict[str, Any]:
    return {
        "slug": s.slug,
        "hook_name": s.hook_name,
        "kind": s.kind,
        "label": kinds.get(s.kind).label,
        "layer": s.layer,
        "n_units": s.n_units,
        "band_basis": s.band_basis,
        "description": kinds.get(s.kind).describe(s.spec),
    }


def model_dict(store: Store, m: ModelInfo) -> dict[str, Any]:
    return {
        "model": m.model,
        "n_layers": m.n_layers,
        "d_model": m.d_model,
        "d_vocab": m.d_vocab,
        "n_ctx": m.n_ctx,
        "ctx": m.ctx,
        "n_sequences": m.n_sequences,
        "n_tokens": m.n_tokens,
        "sources": [source_dict(s) for s in store.sources(m.model)],
    }


def example_dicts(store: Store, model: str, examples: list[Example], with_tokens: bool = True) -> list[dict[str, Any]]:
    """Each example as the pages' data, every example's tokens looked up in one go (a
    unit page has up to a hundred examples). Without `with_tokens` (an HTML page, which
    shows tokens by id) no token strings or bytes."""
    if not with_tokens:
        return [
            {
                "seq": ex.seq,
                "pos": ex.pos,
                "act": ex.act,
                "start": ex.start,
                "token_ids": ex.token_ids,
                "acts": ex.acts,
                "focus": ex.pos - ex.start,
            }
            for ex in examples
        ]
    ids = list(chain.from_iterable(ex.token_ids for ex in examples))
    tokens, hexes = store.token_strings(model, ids), store.token_hex(model, ids)
    out = []
    a = 0
    for ex in examples:
        b = a + len(ex.token_ids)
        out.append(
            {
                "seq": ex.seq,
                "pos": ex.pos,
                "act": ex.act,
                "start": ex.start,
                "tokens": tokens[a:b],
                "token_ids": ex.token_ids,
                "token_bytes": hexes[a:b],
                "acts": ex.acts,
                "focus": ex.pos - ex.start,
            }
        )
        a = b
    return out


def logit_list(store: Store, model: str, ids: list[int], values: list[float]) -> list[dict[str, Any]]:
    return [
        {"token": t, "token_id": i, "token_bytes": h, "value": v}
        for i, t, h, v in zip(ids, store.token_strings(model, ids), store.token_hex(model, ids), values)
    ]


# -- pages ----------------------------------------------------------------------------
def served_model_dict(catalog: Catalog, m: ServedModel) -> dict[str, Any]:
    """A model with its sources, and the index file it is served from."""
    return {**model_dict(m.store, m.info), "index": catalog.label(m.index)}


def home_data(catalog: Catalog, only: str | None = None) -> dict[str, Any]:
    """Every model served (or only the one named), and the index files they come from.
    `corpus`, `built_at` and `meta` are those of the first file (each model and file
    has its own)."""
    served = [catalog.served(only)] if only is not None else catalog.models()
    indexes = [
        {
            "file": catalog.label(f),
            "models": [m.model for m in served if m.index is f],
            **index_record.summary(f.store.meta),
        }
        for f in catalog.files()
        if any(m.index is f for m in served)
    ]
    models = [served_model_dict(catalog, m) for m in served]
    first = indexes[0]
    return {
        "models": models,
        "n_tokens": sum(m["n_tokens"] for m in models),
        "n_sequences": sum(m["n_sequences"] for m in models),
        "corpus": first["corpus"],
        "built_at": first["built_at"],
        "meta": first["meta"],
        "indexes": indexes,
    }


COLUMNS = {
    "unit": ("unit", "The unit's index in its source"),
    "max": ("max", "Largest activation on an indexed token"),
    "mean": ("mean", "Mean activation over all indexed tokens"),
    "density": ("density", "Share of indexed tokens on which the unit's activation is above 0"),
    "cos_in_out": (
        "cos(w_in, w_out)",
        "Cosine between the neuron's input and output weight vectors: near 0 for most neurons; "
        "near ±1 when a neuron reads and writes the same direction",
    ),
}


DEFAULT_TABLE = params.TableQuery()


def source_data(
    store: Store,
    urls: URLs,
    model: str,
    source: str,
    query: params.TableQuery = DEFAULT_TABLE,
    *,
    errors: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A source's unit table: the units `query` keeps, sorted, one page of them.

    Without `errors` (the API) bad input raises a FieldError (422). With `errors` (the
    page: the errors found parsing the visitor's text, by field) the table is shown
    without the failing fields and every error is added to data["errors"]."""
    src = get_source(store, model, source)
    table = store.unit_table(model, source)
    strict = errors is None
    errs = dict(errors or {})
    errs.update({f: m for f, m in params.table_errors(query).items() if f not in errs})
    if "sort" not in errs and query.sort not in table.columns:
        errs["sort"] = (
            f"No unit of {src.slug} has a {query.sort} value, so the table cannot be sorted by it "
            f"(sortable here: {', '.join(table.columns)})."
        )
    if errs and strict:
        field, message = next(iter(errs.items()))
        raise params.FieldError(field, message, params.table_error_status(query, field))
    query = query.without(errs)
    default_hide = kinds.get(src.kind).hide_dead
    hide_dead = default_hide if query.hide_dead is None else query.hide_dead
    vocab = store.vocab(model)
    keep = _table_mask(table, vocab, query, hide_dead)
    rows = table.select(query.sort, query.order, keep)
    total = len(rows)
    n_pages = max(1, -(-total // query.per_page))
    try:
        params.check_page_exists(query.page, n_pages)
    except params.FieldError as exc:
        if strict:
            raise
        errs["page"] = exc.message
        query = replace(query, page=1)
    page = query.page
    chunk = rows[(page - 1) * query.per_page : page * query.per_page]
    link_query = {
        "sort": query.sort,
        "order": query.order,
        "q": query.q or None,
        "min_pct": params.density_text(query.min_density) or None,
        "max_pct": params.density_text(query.max_density) or None,
        "hide_dead": None if hide_dead == default_hide else str(hide_dead).lower(),
        "per_page": query.per_page if query.per_page != 50 else None,
    }
    units = []
    for i in chunk:
        r = table.row(int(i))
        units.append(
            {
                "index": r.unit,
                "max": r.max,
                "mean": r.mean,
                "density": r.density,
                "cos_in_out": r.cos_in_out,
                "top_token_id": r.top_token_id,
                "top_token": vocab[r.top_token_id] if r.top_token_id is not None else None,
            }
        )
    return {
        "model": model,
        "source": source_dict(src),
        "sort": query.sort,
        "order": query.order,
        "q": query.q,
        "min_density": query.min_density,
        "max_density": query.max_density,
        "hide_dead": hide_dead,
        "hide_dead_default": default_hide,
        "n_dead": table.n_dead,
        "columns": [{"key": c, "label": COLUMNS[c][0], "help": COLUMNS[c][1]} for c in table.columns],
        "page": page,
        "per_page": query.per_page,
        "n_pages": n_pages,
        "total": total,
        "units": units,
        "prev_page": urls.source(model, source, **link_query, page=page - 1) if page > 1 else None,
        "next_page": urls.source(model, source, **link_query, page=page + 1) if page < n_pages else None,
        "params": link_query,
        **({} if strict else {"errors": errs}),
    }


def _table_mask(table: UnitTable, vocab: list[str], query: params.TableQuery, hide_dead: bool) -> np.ndarray | None:
    """The rows (in unit order) a table query keeps; None: all of them."""
    keep = None

    def both(mask: np.ndarray) -> np.ndarray:
        return mask if keep is None else keep & mask

    if query.min_density is not None:
        keep = both(table.density >= query.min_density)
    if query.max_density is not None:
        keep = both(table.density <= query.max_density)
    if hide_dead:
        keep = both(table.density > 0)
    if query.q.strip():
        needle = query.q.lower()
        matching = np.fromiter((needle in t.lower() for t in vocab), dtype=bool, count=len(vocab))
        ids = table.top_token_id
        on_token = np.zeros(len(table), dtype=bool)
        has = (ids >= 0) & (ids < len(vocab))
        on_token[has] = matching[ids[has]]
        number = query.q.strip()
        if number.isascii() and number.isdigit():
            on_token |= table.unit == int(number)
        keep = both(on_token)
    return keep


def check_index(src: SourceInfo, index: int) -> None:
    if not 0 <= index < src.n_units:
        raise not_found(f"{src.slug} has units 0 to {src.n_units - 1}; there is no unit {index}.")


def unit_data(
    store: Store,
    live: LiveService,
    urls: URLs,
    model: str,
    source: str,
    index: int,
    *,
    band: str | None = None,
    text: str | None = None,
    page: str | None = None,
    per_page: str | None = None,
    open: str | None = None,
    explain: str | None = None,
    shown_only: bool = False,
    with_full: bool = False,
    as_json: Callable[[list[list[Example]]], list[Any] | None] | None = None,
) -> dict[str, Any]:
    """A unit's page data: statistics, top examples, bands, logit effects, links, the
    example set shown (`band`: "top" or a band number, checked; `page` of `per_page` of
    its stored examples: `shown`), the expanded example (`open`, "SEQ:POS") and, with
    `text`, the unit's activation on every token of it (`live`). A unit that never fired
    on an indexed token is `dead`.

    With `shown_only` (the HTML page) only the band shown carries its examples: the
    other bands keep their range, count and share but no "examples" key, and examples
    carry no token strings or bytes (the page shows tokens by id). By default
    (the API) every band has them. The top examples are always there. With `with_full`
    (the HTML page), `full` is the expanded example's whole sequence, tinted. With
    `as_json` (the API), the example sets are what as_json(sets) gives (each set as
    JSON), unless it gives None."""
    src = get_source(store, model, source)
    check_index(src, index)
    # The page reads the examples of the band it shows only (band_choice checks it below).
    number = params.whole_number(band) if band is not None else None
    asked = {number} if number is not None else set()
    rec = store.unit(model, source, index, bands=asked if shown_only else None)
    if rec is None:
        raise not_found(f"Unit {index} of {source} has no statistics in this index.")
    text = params.visitor_text(text)
    shown = params.band_choice(band, len(rec.bands))
    page_no, n_per_page = params.example_page(page, per_page)
    opened = params.open_example(open)
    explained = explain_state.unit_page_part(urls, model, source, index, explain, params.visitor_text(text))
    if opened is not None:
        info = get_model(store, model)
        if opened[0] >= info.n_sequences or opened[1] >= info.ctx:
            raise params.missing(
                "open",
                f"No example at {opened[0]}:{opened[1]}: sequences 0 to {info.n_sequences - 1}, positions 0 to {info.ctx - 1}.",
            )
    st = rec.stats
    scale = unit_view.scale_of(st)
    logits = None
    if rec.logits is not None:
        lg = rec.logits
        logits = {
            "top": logit_list(store, model, lg.top_ids, lg.top_values),
            "bottom": logit_list(store, model, lg.bottom_ids, lg.bottom_values),
        }
    live_part = None
    if text is not None:
        ctx = get_model(store, model).ctx
        res = live.run(text, source)
        live_part = live_data.unit_payload(res, model, source, index, ctx, store.token_hex(model, res.token_ids))
    n = src.n_units
    liveness = store.liveness(model, source)
    prev, nxt = unit_view.neighbours(liveness.fired, index, n)
    other_hooks, compare_url = unit_refs.other_hooks(store, urls, src, index)
    basis = unit_view.basis_words(src.band_basis)
    if shown == "top":
        shown_examples = rec.top
        shown_set = unit_view.example_page(len(rec.top), page_no, n_per_page, "the top examples")
        shown_set.update(band="top", empty=not rec.top)
    else:
        b = rec.bands[int(shown)]
        shown_examples = b.examples
        shown_set = unit_view.example_page(b.stored, page_no, n_per_page, f"band {b.band}")
        shown_set.update(band=shown, empty=b.count == 0)
    on_page = shown_examples[shown_set["first"] : shown_set["first"] + shown_set["count"]]
    open_shown = opened is not None and any((ex.seq, ex.pos) == opened for ex in on_page)

    # The page's state as query parameters (None: the default), as its links keep it.
    state = {
        "band": None if shown == "top" else shown,
        "page": page_no if page_no > 1 else None,
        "per_page": n_per_page if n_per_page != params.EXAMPLES_PER_PAGE else None,
        "open": None if opened is None else f"{opened[0]}:{opened[1]}",
        "text": text,
        "explain": None if explained is None else explained["key"],
    }

    def set_url(p: int) -> str:
        # A page of the same set keeps the explanation that still applies to it.
        kept = explain_state.kept(explained, shown == "top")
        return urls.unit(model, source, index, **{**state, "page": p if p > 1 else None, "open": None, "explain": kept})

    shown_set["prev_page"] = set_url(page_no - 1) if page_no > 1 else None
    shown_set["next_page"] = set_url(page_no + 1) if page_no < shown_set["n_pages"] else None
    attention_hook = kinds.get(src.kind).attention_hook(src.layer)
    with_examples = [b for b in rec.bands if not shown_only or shown == str(b.band)]
    sets = [rec.top] + [b.examples for b in with_examples]
    # The API's sets as JSON already, where they can be (a head's examples get attention below).
    encoded = as_json(sets) if as_json is not None and attention_hook is None else None
    top: Any
    if encoded is not None:
        top, band_examples = encoded[0], {b.band: e for b, e in zip(with_examples, encoded[1:])}
    else:
        # Every example the data carries, converted in one go, then cut back into its sets.
        dicts = iter(example_dicts(store, model, [ex for s in sets for ex in s], with_tokens=not shown_only))
        top = list(islice(dicts, len(rec.top)))
        band_examples = {b.band: list(islice(dicts, len(b.examples))) for b in with_examples}
    twin = twin_source(store, model, src)
    data: dict[str, Any] = {
        "model": model,
        "source": source_dict(src),
        "index": index,
        "examples_by": examples_by(src),
        "twin": None
        if twin is None
        else {
            "source": twin.slug,
            "examples_by": examples_by(twin),
            "url": urls.unit(model, twin.slug, index, text=text),
        },
        "dead": st.n_fired == 0,
        "n_dead": len(liveness.dead),
        "stats": stats_dict(st),
        "cos_in_out": st.cos_in_out,
        "scale": scale,
        "top": top,
        "bands": [
            {
                "band": b.band,
                "name": unit_view.band_name(b.q_lo, b.q_hi),
                "label": f"{unit_view.band_name(b.q_lo, b.q_hi)} {basis}",
                "q_lo": b.q_lo,
                "q_hi": b.q_hi,
                "lo": b.lo,
                "hi": b.hi,
                "count": b.count,
                "share": b.share,
                "empty": b.count == 0,
                "stored": b.stored,
                **({"examples": band_examples[b.band]} if b.band in band_examples else {}),
            }
            for b in rec.bands
        ],
        "logits": logits,
        "links": {
            "prev": urls.unit(model, source, prev, text=text),
            "next": urls.unit(model, source, nxt, text=text),
            "prev_any": urls.unit(model, source, (index - 1) % n, text=text),
            "next_any": urls.unit(model, source, (index + 1) % n, text=text),
            "random": urls.random_unit(model, source, text=text),
            "random_dead": urls.random_unit(model, source, dead=1) if len(liveness.dead) else None,
            "source": urls.source(model, source),
            "compare": compare_url,
        },
        "other_hooks": other_hooks,
        "band": shown,
        "shown": shown_set,
        "open": None
        if opened is None
        else {
            "seq": opened[0],
            "pos": opened[1],
            "url": urls.sequence(model, opened[0], source=source, index=index, pos=opened[1]),
            "on_page": open_shown,
        },
        "text": text,
        "params": state,
        "live": live_part,
        "explain": explained,
        "explain_note": explain_state.unapplied(explained, text is not None, shown == "top", on_page),
    }
    data["attention"] = None
    if attention_hook is not None:
        # Where the focus token of each example on the page attends (a head's pattern).
        shown_dicts = data["top"] if shown == "top" else data["bands"][int(shown)].get("examples", [])
        on_page_dicts = shown_dicts[shown_set["first"] : shown_set["first"] + shown_set["count"]]
        error = head_view.attach_attention(store, live, urls, model, source, index, attention_hook, on_page_dicts)
        data["attention"] = {"hook": attention_hook, "head": index, "error": error}
    if data["dead"] and live_part is not None:
        # Nothing indexed gives a dead unit a scale: tint the visitor's text by its own values.
        data["scale"] = max([abs(a) for a in live_part["acts"][1:] if a is not None] + [1e-9])
    if with_full and opened is not None and open_shown:
        seq, pos = opened
        data["full"] = unit_view.tint_sequence(
            live, source, index, {**sequence_data(store, model, seq), "pos": pos}, scale
        )
        if attention_hook is not None:
            head_view.attend_sequence(live, attention_hook, index, data["full"])
    return data


def random_index(store: Store, model: str, source: str, dead: bool = False) -> int:
    """A random unit that fired (with `dead`: one that never did)."""
    src = get_source(store, model, source)
    index = unit_view.random_unit(store.liveness(model, source), src.n_units, dead, _random)
    if index is None:
        raise not_found(f"{source} has no dead units: every one of them fired." if dead else f"{source} has no units.")
    return index


def sequence_data(store: Store, model: str, seq: int) -> dict[str, Any]:
    get_model(store, model)
    ids = store.sequence(model, seq)
    if ids is None:
        raise not_found(f"No sequence {seq} in the index of {model!r}.")
    return {
        "model": model,
        "seq": seq,
        "token_ids": ids,
        "tokens": store.token_strings(model, ids),
        "token_bytes": store.token_hex(model, ids),
    }


def live_top_data(
    live: LiveService,
    store: Store,
    urls: URLs,
    model: str,
    source: str,
    text: str | None,
    k: int = 5,
    pos: int | None = None,
) -> dict[str, Any]:
    """The units of `source` firing most on each token of `text`, and over all of it."""
    info = get_model(store, model)
    get_source(store, model, source)
    params.check_k(k)
    res = live.run(text, source)
    params.check_pos(pos, len(res.token_ids))
    return live_data.top_payload(res, urls, model, source, k, pos, info.ctx, store.token_hex(model, res.token_ids))
