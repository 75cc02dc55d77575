"""The search page's data: units by focus token, and units ranked by activation on a text.

The two searches are independent forms with their own parameters (`token`, `source`,
`page` and `per_page`; `text` and `text_source`), all kept in the URL, so a link to
one search's next page keeps the other's results. Unit URLs in the data are permalinks;
the page adds the visitor's text to them.
"""

from __future__ import annotations

from typing import Any

from actscope.app import params
from actscope.app.errors import AppError, bad_input
from actscope.app.live_service import LiveService
from actscope.app.pages import get_model, get_source, live_top_data
from actscope.app.urls import URLs
from actscope.indexer.store.reader import Example, Store

PER_PAGE = 20
TEXT_K = 20  # units listed by the text search
SNIPPET = (8, 4)  # at most this many tokens shown before and after a snippet's focus


def snippet(store: Store, model: str, ex: Example | None) -> dict[str, Any] | None:
    """A short window of an example around its focus token: at most SNIPPET tokens
    before and after it, on the focus token's line."""
    if ex is None:
        return None
    lo = max(0, ex.focus - SNIPPET[0])
    hi = min(len(ex.token_ids), ex.focus + SNIPPET[1] + 1)
    toks = store.token_strings(model, ex.token_ids[lo:hi])
    focus = ex.focus - lo
    first = max([i + 1 for i, t in enumerate(toks[:focus]) if "\n" in t], default=0)
    last = min([focus + 1 + i for i, t in enumerate(toks[focus + 1 :]) if "\n" in t], default=len(toks))
    return {
        "seq": ex.seq,
        "pos": ex.pos,
        "act": ex.act,
        "start": ex.start + lo + first,
        "tokens": toks[first:last],
        "token_ids": ex.token_ids[lo + first : lo + last],
        "token_bytes": store.token_hex(model, ex.token_ids[lo + first : lo + last]),
        "acts": ex.acts[lo + first : lo + last],
        "focus": focus - first,
    }


def search_token_data(
    store: Store,
    urls: URLs,
    model: str,
    token: str,
    source: str | None = None,
    page: int = 1,
    per_page: int = PER_PAGE,
    keep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Units whose top examples focus on `token`, spelt with or without a leading space,
    in any case: most such examples first, then by activation; one page of them.
    `keep`: other parameters the page links keep (the text search's)."""
    get_model(store, model)
    if source:
        get_source(store, model, source)
    if token == "":
        raise bad_input("Give a token to search for.")
    params.check_page(page, per_page)
    variants = store.token_variants(model).match(token)
    found = store.focus_table(model).search([v.token_id for v in variants], source or None)
    n_pages = max(1, -(-found.total // per_page))
    params.check_page_exists(page, n_pages)
    hits = found.page((page - 1) * per_page, page * per_page)
    examples = store.top_examples(model, [(h.source, h.unit, h.best_rank) for h in hits])
    by_id = {v.token_id: v for v in variants}
    n_units = found.units_per_token()
    tops = store.token_strings(model, [h.top_token_id if h.top_token_id is not None else -1 for h in hits])
    query = {
        "token": token,
        "source": source or None,
        "per_page": per_page if per_page != PER_PAGE else None,
        **(keep or {}),
    }
    return {
        "model": model,
        "token": token,
        "source": source or None,
        "variants": [
            {"token": v.token, "token_id": v.token_id, "match": v.label, "n_units": n_units.get(v.token_id, 0)}
            for v in variants
        ],
        "token_ids": [v.token_id for v in variants],
        "total": found.total,
        "page": page,
        "per_page": per_page,
        "n_pages": n_pages,
        "units": [
            {
                "source": h.source,
                "index": h.unit,
                "n_top_examples": h.count,
                "best_act": h.best_act,
                "token": by_id[h.best_token_id].token,
                "token_id": h.best_token_id,
                "match": by_id[h.best_token_id].label,
                "top_token": top if h.top_token_id is not None else None,
                "top_token_id": h.top_token_id,
                "snippet": snippet(store, model, ex),
                "url": urls.unit(model, h.source, h.unit),
            }
            for h, ex, top in zip(hits, examples, tops)
        ],
        "prev_page": urls.search(model, **query, page=page - 1 if page > 2 else None) if page > 1 else None,
        "next_page": urls.search(model, **query, page=page + 1) if page < n_pages else None,
    }


def search_data(
    store: Store,
    live: LiveService,
    urls: URLs,
    model: str,
    token: str | None,
    text: str | None,
    source: str | None = None,
    text_source: str | None = None,
    page: int = 1,
    per_page: int = PER_PAGE,
    errors: dict[str, AppError] | None = None,
) -> dict[str, Any]:
    """The search page: units focusing on `token` (of `source`, or of every source), and
    the units of `text_source` ranked by their activation on `text`.

    With `errors` (the HTML page), a search that fails on the visitor's input (any error
    but a 404) leaves its results empty and its error under errors["token"] or
    errors["text"]; without, it raises."""
    get_model(store, model)
    params.check_page(page, per_page)  # checked with or without a token: the schema's bounds hold either way
    sources = store.sources(model)
    text = params.visitor_text(text)
    text_slug = text_source or (sources[0].slug if sources else None)
    data: dict[str, Any] = {
        "model": model,
        "token": token,
        "source": source or None,
        "variants": [],
        "token_ids": [],
        "total": 0,
        "page": page,
        "per_page": per_page,
        "n_pages": 1,
        "units": [],
        "prev_page": None,
        "next_page": None,
        "text": text,
        "text_source": text_slug,
        "live": None,
        "sources": [{"slug": s.slug, "hook_name": s.hook_name, "kind": s.kind} for s in sources],
    }

    def attempt(part: str, run) -> None:
        try:
            run()
        except AppError as exc:
            if errors is None or (exc.status == 404 and not isinstance(exc, params.FieldError)):
                raise
            errors[part] = exc

    if token is not None and token != "":
        keep = {"text": text, "text_source": text_source or None}
        attempt(
            "token", lambda: data.update(search_token_data(store, urls, model, token, source, page, per_page, keep))
        )
    else:  # no token: one empty page
        attempt("token", lambda: params.check_page_exists(page, 1))
    if text is not None:
        if text_slug is None:
            raise AppError(404, f"Model {model!r} has no sources.")
        attempt("text", lambda: data.update(live=live_top_data(live, store, urls, model, text_slug, text, k=TEXT_K)))
    return data
