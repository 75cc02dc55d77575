"""Page data that combines several sources (stored data + live inference).

Shared by the HTML and JSON routes, so both always carry the same data.
"""

from __future__ import annotations

from typing import Any

from actscope.app import pages
from actscope.app.errors import AppError, bad_input
from actscope.app.live_service import LiveService
from actscope.indexer.store.reader import Store


def unit_view(
    store: Store,
    live: LiveService,
    model: str,
    source: str,
    index: int,
    text: str | None = None,
    band: str | None = None,
    shown_only: bool = False,
) -> dict[str, Any]:
    """With `shown_only` (HTML pages), only the chosen band's examples are loaded."""
    data = pages.unit_data(store, model, source, index, examples_of=(band or "top") if shown_only else None)
    data["band"] = _band_choice(band, len(data["bands"]))
    data["text"] = text
    data["live"] = None
    if text is not None:
        data["live"] = pages.live_unit_data(live, store, model, source, index, text)
    return data


def _band_choice(band: str | None, n_bands: int) -> str:
    if band in (None, "", "top"):
        return "top"
    if band.isdigit() and int(band) < n_bands:
        return band
    raise bad_input(f"band must be 'top' or a band number from 0 to {n_bands - 1}, not {band!r}.")


def try_view(
    store: Store,
    live: LiveService,
    model: str,
    source: str | None,
    text: str | None,
    pos: int | None = None,
    k: int = 5,
) -> dict[str, Any]:
    info = pages.get_model(store, model)
    sources = store.sources(model)
    if not sources:
        raise AppError(404, f"Model {model!r} has no sources.")
    slug = source or sources[0].slug
    pages.get_source(store, model, slug)
    data = {
        "model": info.model,
        "source": slug,
        "text": text,
        "pos": pos,
        "k": k,
        "sources": [pages.source_dict(s) for s in sources],
        "live": None,
    }
    if text is not None:
        data["live"] = pages.live_top_data(live, store, model, slug, text, k=k, pos=pos)
    return data


def search_view(
    store: Store, live: LiveService, model: str, token: str | None, text: str | None, source: str | None
) -> dict[str, Any]:
    pages.get_model(store, model)
    data: dict[str, Any] = {
        "model": model,
        "token": token,
        "token_ids": [],
        "source": source,
        "units": [],
        "live": None,
        "sources": [pages.source_dict(s) for s in store.sources(model)],
    }
    if token is not None and token != "":
        data.update(pages.search_token_data(store, model, token, source))
    if text is not None:
        slug = source or (store.sources(model)[0].slug if store.sources(model) else None)
        if slug is None:
            raise AppError(404, f"Model {model!r} has no sources.")
        data["live"] = pages.live_top_data(live, store, model, slug, text, k=20)
    return data
