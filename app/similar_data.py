"""Units like this one: neighbours by fingerprint correlation, and by decoder cosine.

Every unit's fingerprint is its activations at one seeded reservoir of corpus positions
(indexer/store/fingerprints.py). A unit's neighbours are the units whose fingerprints
correlate most with it (Pearson r): in its source, in every source of its model, or also
in the other models served alongside, when their reservoirs line up (the same tokenizer,
and the same tokens at the same positions). Its direct-effect twin, the same unit at its
layer's other hooks, and control sources are never listed. SAE features (kinds with
`decoder_neighbours`) also list the units whose decoder directions are closest.

The code takes the served models as a list of `Served` (model slug, store) pairs: every
model of every index file the server holds (catalog.stores()).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from actscope.app import pages
from actscope.app.errors import not_found
from actscope.app.params import FieldError
from actscope.app.unit_refs import UnitRef, compare_text
from actscope.app.urls import URLs
from actscope.indexer import kinds
from actscope.indexer.errors import ActscopeError
from actscope.indexer.store.fingerprints import MIN_ACTIVE, SourcePrints
from actscope.indexer.store.reader import SourceInfo, Store

SCOPES = ("source", "model", "all")
SCOPE_WORDS = {"source": "this source", "model": "every source of this model", "all": "every model served here"}
MAX_K = 100


@dataclass(frozen=True)
class Served:
    """One model the server holds, and the index it is read from."""

    model: str
    store: Store


def served_models(stores: Iterable[tuple[str, Store]]) -> list[Served]:
    """Every model served, from (model name, Store) pairs (catalog.stores())."""
    return [Served(model, store) for model, store in stores]


def _find(served: list[Served], model: str) -> Served:
    for item in served:
        if item.model == model:
            return item
    raise not_found(f"No model {model!r} is served here (models: {', '.join(s.model for s in served)}).")


def _kind(src: SourceInfo):
    try:
        return kinds.get(src.kind)
    except ActscopeError:
        return None


def _has_decoders(src: SourceInfo) -> bool:
    kind = _kind(src)
    return bool(kind is not None and kind.decoder_neighbours)


def is_control(src: SourceInfo) -> bool:
    kind = _kind(src)
    return bool(kind is not None and kind.control)


def same_unit_sources(store: Store, src: SourceInfo) -> set[str]:
    """The sources whose unit i is unit i of `src` or its twin: its direct-effect twins
    (and the source it is the twin of), and its kind's other hooks of the layer."""
    out: set[str] = set()
    own_twin = kinds.twin_of(src.kind, src.spec)
    kind = _kind(src)
    across_hooks = kind is not None and kind.same_unit_across_hooks
    for other in store.sources(src.model):
        twins = kinds.twin_of(other.kind, other.spec) == src.slug or own_twin == other.slug
        same_hooks = across_hooks and other.kind == src.kind and other.layer == src.layer
        if other.slug != src.slug and (twins or same_hooks):
            out.add(other.slug)
    return out


def line_up(home: Served, other: Served) -> str | None:
    """Why the fingerprints of `other`'s model cannot be compared with `home`'s, or None
    when they can (the same tokenizer, the same tokens at the same reservoir positions):
    what differs, with both sides' figures."""
    here, there = home.model, other.model
    a, b = home.store.reservoir(here), other.store.reservoir(there)
    if a is None or b is None:
        return f"the index of {there if b is None else here} has no fingerprints (it was built with --reservoir 0)"
    vocab_a, vocab_b = home.store.vocab_bytes(here), other.store.vocab_bytes(there)
    if len(vocab_a) != len(vocab_b):
        return f"another tokenizer: {there}'s has {len(vocab_b):,} tokens, {here}'s {len(vocab_a):,}"
    if vocab_a != vocab_b:
        differ = [i for i, (x, y) in enumerate(zip(vocab_a, vocab_b)) if x != y]
        return (
            f"another tokenizer: both have {len(vocab_a):,} tokens, but {len(differ):,} of them differ "
            f"(token {differ[0]} is {vocab_b[differ[0]]!r} in {there}, {vocab_a[differ[0]]!r} in {here})"
        )
    info_a, info_b = home.store.model(here), other.store.model(there)
    if info_a is not None and info_b is not None and info_a.ctx != info_b.ctx:
        return f"sequences of another length: {there}'s are {info_b.ctx} tokens long (--ctx), {here}'s {info_a.ctx}"
    if a.n != b.n:
        return f"reservoirs of other sizes: {there}'s has {b.n:,} positions, {here}'s {a.n:,} (--reservoir)"
    if a.seed != b.seed:
        return f"reservoirs drawn with other seeds: {there}'s with --seed {b.seed}, {here}'s with --seed {a.seed}"
    if not (np.array_equal(a.seq, b.seq) and np.array_equal(a.pos, b.pos)):
        moved = int(np.count_nonzero((a.seq != b.seq) | (a.pos != b.pos)))
        tokens = (
            ""
            if info_a is None or info_b is None or info_a.n_tokens == info_b.n_tokens
            else (
                f"; {there} indexed {info_b.n_tokens:,} tokens, {here} {info_a.n_tokens:,} (--max-tokens or the corpus)"
            )
        )
        return f"reservoirs at other positions: {moved:,} of their {a.n:,} positions differ{tokens}"
    if not np.array_equal(a.token_id, b.token_id):
        other_tokens = int(np.count_nonzero(a.token_id != b.token_id))
        return (
            f"other tokens at {other_tokens:,} of the reservoir's {a.n:,} positions: the two indexes read "
            "another corpus"
        )
    return None


def sparse_note(prints: SourcePrints, index: int) -> str | None:
    """Why a unit has no correlations, or None when it has."""
    active = int(prints.n_active[index])
    if active < MIN_ACTIVE:
        return (
            f"Too sparse on the reservoir: active on {active} of its {prints.n:,} positions; "
            f"correlations need at least {MIN_ACTIVE}."
        )
    if prints.constant[index]:
        return f"Constant on the reservoir's {prints.n:,} positions: a correlation with it is undefined."
    return None


def _top(values: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest `values` where `allowed`, largest first (ties: lower index)."""
    candidates = np.flatnonzero(allowed)
    if candidates.size > k:
        part = np.argpartition(-values[candidates], k - 1)[:k]
        threshold = values[candidates[part]].min()
        candidates = candidates[values[candidates] >= threshold]  # keep ties at the cut, sorted below
    order = np.lexsort((candidates, -values[candidates].astype(np.float64)))
    return candidates[order][:k]


def _check(scope: str, k: int) -> None:
    if scope not in SCOPES:
        raise FieldError("scope", f"scope is one of {', '.join(SCOPES)}; {scope!r} is not.")
    if not 1 <= k <= MAX_K:
        raise FieldError("k", f"k is from 1 to {MAX_K}; {k} is not.")


def similar_data(
    served: list[Served], urls: URLs, model: str, source: str, index: int, scope: str = "all", k: int = 20
) -> dict[str, Any]:
    """A unit's neighbours in `scope` ("source", "model" or "all"), the `k` best of each list."""
    home = _find(served, model)
    store = home.store
    src = pages.get_source(store, model, source)
    pages.check_index(src, index)
    _check(scope, k)
    ref = UnitRef(model, source, index)
    reservoir = store.reservoir(model)
    data: dict[str, Any] = {
        "model": model,
        "source": source,
        "index": index,
        "scope": scope,
        "k": k,
        "url": urls.unit(model, source, index),
        "scopes": {s: urls.similar(model, source, index, scope=s) for s in SCOPES},
        "reservoir": None
        if reservoir is None
        else {"n": reservoir.n, "seed": reservoir.seed, "url": urls.reservoir(model)},
        "note": None,
        "similar": [],
        "decoder_cosine": None,
        "models": [],
    }
    prints = store.fingerprints(model, source)
    others = [s for s in served if s.model != model]
    data["models"] = [{"model": o.model, "reason": line_up(home, o)} for o in others]
    if prints is None:
        data["note"] = "This index has no fingerprints (it was built with --reservoir 0)."
    else:
        data["note"] = sparse_note(prints, index)
        if data["note"] is None:
            targets = _targets(home, others, src, scope, data["models"])
            data["similar"] = _neighbours(urls, ref, prints.standardised(index), targets, k, model)
    data["decoder_cosine"] = _decoder_neighbours(urls, home, src, index, scope, k)
    return data


@dataclass
class _Target:
    served: Served
    source: SourceInfo
    same_unit: bool  # its unit i is the unit asked about (another hook, a twin): never listed


def _targets(home: Served, others: list[Served], src: SourceInfo, scope: str, lined: list[dict]) -> list[_Target]:
    if scope == "source":
        return [_Target(home, src, True)]
    same = same_unit_sources(home.store, src) | {src.slug}
    out = [
        _Target(home, other, other.slug in same) for other in home.store.sources(home.model) if not is_control(other)
    ]
    if scope == "all":
        ok = {item["model"] for item in lined if item["reason"] is None}
        out += [
            _Target(o, other, False)
            for o in others
            if o.model in ok
            for other in o.store.sources(o.model)
            if not is_control(other)
        ]
    return out


def _neighbours(urls: URLs, ref: UnitRef, z: np.ndarray, targets: list[_Target], k: int, page_model: str) -> list:
    found: list[tuple[float, int, int, _Target]] = []
    for order, target in enumerate(targets):
        prints = target.served.store.fingerprints(target.served.model, target.source.slug)
        if prints is None:
            continue
        r = prints.correlate(z)
        allowed = prints.eligible.copy()
        if target.same_unit and ref.index < allowed.size:
            allowed[ref.index] = False
        found += [(float(r[i]), order, int(i), target) for i in _top(r, allowed, k)]
    found.sort(key=lambda item: (-item[0], item[1], item[2]))
    return [
        _entry(urls, ref, UnitRef(t.served.model, t.source.slug, i), page_model, r=round(value, 6))
        for value, _, i, t in found[:k]
    ]


def _entry(urls: URLs, ref: UnitRef, other: UnitRef, page_model: str, **figure: float) -> dict[str, Any]:
    return {
        "model": other.model,
        "source": other.source,
        "index": other.index,
        **figure,
        "url": urls.unit(other.model, other.source, other.index),
        "compare": urls.compare(page_model, compare_text([ref, other], page_model)),
    }


def _decoder_neighbours(
    urls: URLs, home: Served, src: SourceInfo, index: int, scope: str, k: int
) -> list[dict[str, Any]] | None:
    """The units of the model's decoder sources (all of them, or with scope "source" this
    one) whose decoder directions are closest to the unit's; None for other kinds."""
    store, model = home.store, home.model
    own = store.decoders(model, src.slug) if _has_decoders(src) else None
    if own is None:
        return None
    direction = own[index]
    ref = UnitRef(model, src.slug, index)
    found: list[tuple[float, int, int, str]] = []
    sources = [src] if scope == "source" else [s for s in store.sources(model) if _has_decoders(s)]
    for order, other in enumerate(sources):
        vectors = store.decoders(model, other.slug)
        if vectors is None or vectors.shape[1] != direction.shape[0]:
            continue
        cos = vectors @ direction
        allowed = np.linalg.norm(vectors, axis=1) > 0
        if other.slug == src.slug:
            allowed[index] = False
        found += [(float(cos[i]), order, int(i), other.slug) for i in _top(cos, allowed, k)]
    found.sort(key=lambda item: (-item[0], item[1], item[2]))
    out = []
    for value, _, i, slug in found[:k]:
        entry = _entry(urls, ref, UnitRef(model, slug, i), model, cos=round(value, 6))
        del entry["model"]
        out.append(entry)
    return out


def pair_correlations(served: list[Served], refs: list[UnitRef]) -> list[dict[str, Any]]:
    """Pearson r over the reservoir for every pair of `refs` (by position in the list),
    or null with the reason it has none."""
    by_model = {s.model: s for s in served}
    vectors: list[tuple[np.ndarray | None, str | None]] = []
    for ref in refs:
        item = by_model.get(ref.model)
        prints = None if item is None else item.store.fingerprints(ref.model, ref.source)
        if prints is None:
            vectors.append((None, f"{ref.model} has no fingerprints"))
            continue
        note = sparse_note(prints, ref.index)
        vectors.append((None, f"{ref.text(refs[0].model)}: {note}") if note else (prints.standardised(ref.index), None))
    out = []
    for a, b in combinations(range(len(refs)), 2):
        (za, why_a), (zb, why_b) = vectors[a], vectors[b]
        reason = why_a or why_b
        if reason is None and refs[a].model != refs[b].model:
            mismatch = line_up(by_model[refs[a].model], by_model[refs[b].model])
            reason = None if mismatch is None else f"the two models' reservoirs do not line up: {mismatch}"
        r = None if reason is not None or za is None or zb is None else round(float(za @ zb), 6)
        out.append({"a": a, "b": b, "r": r, "reason": reason})
    return out
