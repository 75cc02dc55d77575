"""The try page's data: a visitor's text, and the units of every source firing most on
each of its tokens and over all of it.

Control sources (a kind's `control`: baselines such as random directions) are left out.
One source colours the tokens (`source`, the first by default); every source lists its
units. Unit URLs in the data are permalinks; the page adds the visitor's text to them.
"""

from __future__ import annotations

from typing import Any

from actscope.app import live_data, params
from actscope.app.errors import AppError, bad_input
from actscope.app.live_service import LiveService
from actscope.app.pages import get_model, get_source, source_dict
from actscope.app.urls import URLs
from actscope.indexer import kinds
from actscope.indexer.errors import ActscopeError
from actscope.indexer.store.reader import SourceInfo, Store


def is_control(source: SourceInfo) -> bool:
    """Whether a source is a control baseline (its kind says so)."""
    try:
        return bool(kinds.get(source.kind).control)
    except ActscopeError:  # a kind this version does not know is shown, not hidden
        return False


def try_sources(store: Store, model: str) -> list[SourceInfo]:
    """The model's sources the try page runs: all but the control ones."""
    return [s for s in store.sources(model) if not is_control(s)]


def try_live(
    live: LiveService,
    store: Store,
    urls: URLs,
    model: str,
    sources: list[SourceInfo],
    text: str,
    k: int,
    pos: int | None,
    colour: str,
    ctx: int,
) -> dict[str, Any]:
    """Per source: the k units firing most on each token, and over the text."""
    results = [live.run(text, s.slug) for s in sources]
    first = results[0]
    params.check_pos(pos, len(first.token_ids))
    hexes = store.token_hex(model, first.token_ids)
    blocks = []
    for s, res in zip(sources, results):
        payload = live_data.top_payload(res, urls, model, s.slug, k, pos, ctx, hexes)
        blocks.append(
            {
                "source": s.slug,
                "hook_name": s.hook_name,
                "kind": s.kind,
                "top": payload["top"],
                "overall": payload["overall"],
                "max_per_token": payload["max_per_token"],
            }
        )
    return {
        "model": model,
        "text": first.text,
        "tokens": first.tokens,
        "token_ids": first.token_ids,
        "token_bytes": hexes,
        "truncated": first.truncated,
        "ctx": ctx,
        "k": k,
        "pos": pos,
        "source": colour,
        "sources": blocks,
    }


def try_data(
    store: Store,
    live: LiveService,
    urls: URLs,
    model: str,
    text: str | None,
    pos: int | None = None,
    k: int = 5,
    source: str | None = None,
) -> dict[str, Any]:
    """The try page: with `text`, its tokens (coloured by `source`) and, for every
    source, the units firing most on them (`live`)."""
    info = get_model(store, model)
    sources = try_sources(store, model)
    if not sources:
        raise AppError(404, f"Model {model!r} has no sources to run.")
    colour = source or sources[0].slug
    if colour not in [s.slug for s in sources]:
        get_source(store, model, colour)  # 404 if unknown
        raise bad_input(f"{colour} is a control source: colour the text by another one.")
    text = params.visitor_text(text)
    data: dict[str, Any] = {
        "model": info.model,
        "source": colour,
        "text": text,
        "pos": pos,
        "k": k,
        "sources": [source_dict(s) for s in sources],
        "live": None,
    }
    if text is not None:
        params.check_k(k)
        data["live"] = try_live(live, store, urls, model, sources, text, k, pos, colour, info.ctx)
    return data
