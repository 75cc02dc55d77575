"""The compare view's data: two or more units side by side (their statistics, histograms
and top examples), the overlap of their top examples' focus tokens, and the correlation
of every pair's fingerprints.

Units are written `source/index`, or `model:source/index` for a unit of another model
the server holds, from any of its index files (app/unit_refs.py). Focus tokens are (seq, pos) pairs of one model's
corpus: only units of the same model have comparable ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import combinations
from typing import Any

from actscope.app.errors import not_found
from actscope.app.pages import example_dicts, source_dict, stats_dict
from actscope.app.params import FieldError
from actscope.app.similar_data import pair_correlations, served_models
from actscope.app.unit_refs import UnitRef, compare_text
from actscope.app.unit_view import scale_of
from actscope.app.urls import URLs
from actscope.indexer.store.reader import Store

MAX_UNITS = 8
_REF = "(?:[A-Za-z0-9._-]+:)?[A-Za-z0-9._-]+/[0-9]+"
# What the API's `units` takes (the page's box is lenient with spaces and stray commas).
UNITS_PATTERN = f"^{_REF}(?:,{_REF}){{1,{MAX_UNITS - 1}}}$"
UNIT_REF = re.compile(r"^(?:([^:/\s]+):)?([^:/\s]+)/(\d+)$")


def parse_units(stores: Mapping[str, Store], model: str, text: str | None) -> list[UnitRef]:
    """The units of a compare URL's `units`, checked against the models served (`stores`:
    model -> its Store): a FieldError ("units") naming every bad one."""
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if not items:
        raise FieldError(
            "units",
            "Name two or more units to compare, separated by commas: source/index (e.g. 1-mlp/5), "
            "or model:source/index for a unit of another model served here.",
        )
    refs: list[UnitRef] = []
    problems: list[str] = []
    malformed = False  # only units the index lacks: a 404, as the API contract says
    for item in items:
        match = UNIT_REF.match(item)
        if not match:
            problems.append(f"{item!r} is not a unit: write source/index (e.g. 1-mlp/5) or model:source/index.")
            malformed = True
            continue
        ref = UnitRef(match.group(1) or model, match.group(2), int(match.group(3)))
        problem = _check(stores, ref, item)
        if problem is None and ref in refs:
            problem, malformed = f"{item} is listed twice.", True
        if problem:
            problems.append(problem)
        else:
            refs.append(ref)
    if not problems and len(refs) < 2:
        problems.append(f"Name at least two units to compare (only {items[0]} given).")
        malformed = True
    if not problems and len(refs) > MAX_UNITS:
        problems.append(f"At most {MAX_UNITS} units side by side ({len(refs)} given).")
        malformed = True
    if problems:
        raise FieldError("units", " ".join(problems), 422 if malformed else 404)
    return refs


def _check(stores: Mapping[str, Store], ref: UnitRef, item: str) -> str | None:
    store = stores.get(ref.model)
    if store is None:
        return f"{item}: no model {ref.model!r} is served here (models: {', '.join(stores)})."
    src = store.source(ref.model, ref.source)
    if src is None:
        known = ", ".join(s.slug for s in store.sources(ref.model))
        return f"{item}: {ref.model} has no source {ref.source!r} (sources: {known})."
    if not 0 <= ref.index < src.n_units:
        return f"{item}: {src.slug} has units 0 to {src.n_units - 1}."
    return None


def _unit_column(store: Store, urls: URLs, ref: UnitRef, page_model: str) -> dict[str, Any]:
    src = store.source(ref.model, ref.source)
    rec = store.unit(ref.model, ref.source, ref.index, bands=())  # the top examples only
    if src is None or rec is None:  # parse_units checked both
        raise FieldError("units", f"{ref.text(page_model)} has no statistics in this index.")
    st = rec.stats
    return {
        "ref": ref.text(page_model),
        "model": ref.model,
        "source": source_dict(src),
        "index": ref.index,
        "url": urls.unit(ref.model, ref.source, ref.index),
        "dead": st.n_fired == 0,
        "stats": stats_dict(st),
        "bands": [{"band": b.band, "lo": b.lo, "hi": b.hi, "count": b.count} for b in rec.bands],
        "scale": scale_of(st),
        "top": example_dicts(store, ref.model, rec.top),
    }


def _focus_link(urls: URLs, unit: dict[str, Any], seq: int, pos: int) -> dict[str, Any]:
    url = urls.sequence(unit["model"], seq, source=unit["source"]["slug"], index=unit["index"], pos=pos)
    return {"seq": seq, "pos": pos, "url": url}


def overlap(urls: URLs, units: list[dict[str, Any]]) -> dict[str, Any]:
    """Shared focus tokens of the units' top examples: per pair (of one model's units;
    other pairs are not `comparable`), and those of every unit; each top example is told
    which other units (by column) share its focus."""
    focus = [{(ex["seq"], ex["pos"]) for ex in u["top"]} for u in units]
    pairs = []
    for a, b in combinations(range(len(units)), 2):
        comparable = units[a]["model"] == units[b]["model"]
        shared = sorted(focus[a] & focus[b]) if comparable else []
        pairs.append(
            {
                "a": a,
                "b": b,
                "comparable": comparable,
                "n_shared": len(shared) if comparable else None,
                "shared": [_focus_link(urls, units[a], seq, pos) for seq, pos in shared],
            }
        )
    one_model = len({u["model"] for u in units}) == 1
    in_all = sorted(set.intersection(*focus)) if one_model and focus else []
    for i, u in enumerate(units):
        for ex in u["top"]:
            key = (ex["seq"], ex["pos"])
            ex["shared_with"] = [
                j for j, other in enumerate(units) if j != i and other["model"] == u["model"] and key in focus[j]
            ]
    return {
        "pairs": pairs,
        "in_all": [_focus_link(urls, units[0], seq, pos) for seq, pos in in_all] if one_model else None,
    }


def compare_data(
    stores: Mapping[str, Store], urls: URLs, model: str, units: str | None, *, strict: bool = True
) -> dict[str, Any]:
    """Units side by side, on the page of `model`; `stores`: the Store of each model
    served (dict(catalog.stores())). Bad `units` raise a FieldError; without `strict`
    (the page) the error is returned under "error", with no units, and the text kept."""
    if model not in stores:
        raise not_found(f"No model {model!r} on this server (it serves: {', '.join(stores)}).")
    data: dict[str, Any] = {
        "model": model,
        "units_text": units or "",
        "units": [],
        "overlap": None,
        "correlations": None,
        "error": None,
    }
    outside_schema = strict and re.fullmatch(UNITS_PATTERN, units or "") is None
    try:
        refs = parse_units(stores, model, units)
    except FieldError as exc:
        if not strict:
            data["error"] = exc.message
            return data
        if exc.status == 404 and outside_schema:
            raise FieldError(exc.field, exc.message) from None  # outside the schema: a 422
        raise
    if outside_schema:
        raise FieldError("units", "Write the units as source/index or model:source/index, comma-separated, no spaces.")
    columns = [_unit_column(stores[ref.model], urls, ref, model) for ref in refs]
    data["units_text"] = compare_text(refs, model)
    data["units"] = columns
    data["overlap"] = overlap(urls, columns)
    data["correlations"] = pair_correlations(served_models(stores.items()), refs)
    return data
