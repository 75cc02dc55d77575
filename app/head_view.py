"""What a unit page adds for a unit with an attention pattern (an attention head): where
each shown example's focus token attends, computed live from the stored tokens."""

from __future__ import annotations

from typing import Any

import numpy as np

from actscope.app.errors import AppError
from actscope.app.live_service import LiveService
from actscope.app.urls import URLs
from actscope.indexer.store.reader import Store


def attach_attention(
    store: Store,
    live: LiveService,
    urls: URLs,
    model: str,
    source: str,
    head: int,
    hook: str,
    examples: list[dict[str, Any]],
) -> str | None:
    """Add `attention` to each example (example dicts of pages.example_dict): the focus
    token's attention over the window (`weights`, A[focus, s] for every window token, 0
    after the focus), to BOS (`bos`), and its strongest source other than BOS
    (`strongest`: position, weight, token, whether it is in the window, and the sequence's
    page). One live job for all of them; returns the error message when live inference
    failed (the examples then get `attention` None)."""
    for ex in examples:
        ex["attention"] = None
    if not examples:
        return None
    prefixes = []
    for ex in examples:
        ids = store.sequence(model, ex["seq"]) or []
        prefixes.append(ids[: ex["pos"] + 1])
    try:
        rows = live.attention(hook, prefixes)
    except AppError as exc:
        return exc.message
    links = urls.sequences(model, source, head, [(ex["seq"], ex["pos"]) for ex in examples])
    for ex, prefix, row, link in zip(examples, prefixes, rows, links):
        ex["attention"] = focus_attention(row[head], ex["start"], len(ex["token_ids"]), prefix, link)
        ex["attention"]["strongest"]["token"] = store.token_strings(model, [ex["attention"]["strongest"]["token_id"]])[
            0
        ]
    return None


def focus_attention(row: np.ndarray, start: int, width: int, prefix: list[int], url: str) -> dict[str, Any]:
    """The focus token's attention row A[focus, 0..focus] laid over a window of `width`
    tokens from sequence position `start`."""
    focus = len(row) - 1
    weights = [float(row[s]) if s <= focus else 0.0 for s in range(start, start + width)]
    s = 1 + int(np.argmax(row[1:])) if focus >= 1 else 0
    return {
        "weights": weights,
        "bos": float(row[0]),
        "strongest": {
            "pos": s,
            "weight": float(row[s]),
            "token_id": int(prefix[s]),
            "token": "",
            "in_window": start <= s < start + width,
            "url": url,
        },
    }


def attend_sequence(live: LiveService, hook: str, head: int, data: dict[str, Any]) -> dict[str, Any]:
    """A whole sequence's data (pages.sequence_data, with its focus `pos`) with
    `attention`: where the focus token attends, over the whole sequence (None without a
    focus past BOS, or with `attention_error` when live inference failed)."""
    data.update(attention=None, attention_error=None)
    ids, pos = data["token_ids"], data.get("pos")
    if pos is None or not 1 <= pos < len(ids):
        return data
    try:
        (rows,) = live.attention(hook, [ids[: pos + 1]])
    except AppError as exc:
        data["attention_error"] = exc.message
        return data
    data["attention"] = focus_attention(rows[head], 0, len(ids), ids[: pos + 1], "")
    data["attention"]["strongest"]["token"] = data["tokens"][data["attention"]["strongest"]["pos"]]
    return data
