"""Live results (a visitor's text run through the model) as JSON-ready page data.

Pure functions of a `LiveResult`: the lookups and checks are the callers' (app/pages.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from actscope.app.live_service import LiveResult
from actscope.app.urls import URLs


def unit_payload(res: LiveResult, model: str, source: str, index: int, ctx: int) -> dict[str, Any]:
    """One unit's activation on every token of the text (BOS first)."""
    acts = res.acts[:, index]
    return {
        "model": model,
        "source": source,
        "index": index,
        "text": res.text,
        "tokens": res.tokens,
        "token_ids": res.token_ids,
        "acts": acts.tolist(),
        "truncated": res.truncated,
        "max": float(acts[1:].max()) if len(acts) > 1 else 0.0,
        "ctx": ctx,
    }


def _top_units(
    res: LiveResult, k: int, skip_bos: bool = True
) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Per token: the k units with the largest activation; over the text: by max."""
    acts = res.acts
    per_token = []
    for p in range(acts.shape[0]):
        row = acts[p]
        idx = np.argsort(-row, kind="stable")[:k]
        per_token.append([{"index": int(i), "act": float(row[i])} for i in idx])
    body = acts[1:] if skip_bos and acts.shape[0] > 1 else acts
    best = body.max(axis=0)
    order = np.argsort(-best, kind="stable")[:k]
    overall = [
        {"index": int(i), "act": float(best[i]), "pos": int(np.argmax(body[:, i])) + (1 if body is not acts else 0)}
        for i in order
    ]
    return per_token, overall


def top_payload(
    res: LiveResult, urls: URLs, model: str, source: str, k: int, pos: int | None, ctx: int
) -> dict[str, Any]:
    """The units firing most on each token, and over the whole text."""
    per_token, overall = _top_units(res, k)
    for units in per_token + [overall]:
        for u in units:
            u["url"] = urls.unit(model, source, u["index"])
    return {
        "model": model,
        "source": source,
        "text": res.text,
        "tokens": res.tokens,
        "token_ids": res.token_ids,
        "truncated": res.truncated,
        "k": k,
        "top": per_token,
        "overall": overall,
        "pos": pos,
        "max_per_token": [u[0]["act"] if u else 0.0 for u in per_token],
        "ctx": ctx,
    }
