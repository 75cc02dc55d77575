"""A unit as the compare view writes it (`source/index`, `model:source/index` for a
unit of another model served), and the same unit at the other hooks of its layer (a
neuron's hook_pre, hook_mid, hook_post), which a unit page links to and compares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actscope.app.urls import URLs
from actscope.indexer import kinds
from actscope.indexer.errors import ActscopeError
from actscope.indexer.store.reader import SourceInfo, Store

# Where each MLP hook sits in the forward pass, for listing a neuron's hooks in that order.
HOOK_ORDER = {"hook_pre": 0, "hook_pre_linear": 1, "hook_mid": 2, "hook_post": 3}


@dataclass(frozen=True)
class UnitRef:
    model: str
    source: str
    index: int

    def text(self, page_model: str) -> str:
        """As written in a compare URL of `page_model`'s pages."""
        local = f"{self.source}/{self.index}"
        return local if self.model == page_model else f"{self.model}:{local}"


def compare_text(refs: list[UnitRef], page_model: str) -> str:
    return ",".join(ref.text(page_model) for ref in refs)


def other_hooks(store: Store, urls: URLs, src: SourceInfo, index: int) -> tuple[list[dict[str, Any]], str | None]:
    """The same unit at the other hooks of its layer, where its kind has one unit at
    several hooks (a neuron): [{source, hook_name, url}] in forward order, and the
    compare URL of all of them (None when there is no other)."""
    try:
        kind = kinds.get(src.kind)
    except ActscopeError:
        return [], None
    if not kind.same_unit_across_hooks:
        return [], None
    same = [
        s for s in store.sources(src.model) if s.kind == src.kind and s.layer == src.layer and s.n_units == src.n_units
    ]
    if len(same) < 2:
        return [], None
    same.sort(key=lambda s: (HOOK_ORDER.get(s.hook_name.rsplit(".", 1)[-1], len(HOOK_ORDER)), s.hook_name))
    refs = [UnitRef(s.model, s.slug, index) for s in same]
    others = [
        {"source": s.slug, "hook_name": s.hook_name, "url": urls.unit(s.model, s.slug, index)}
        for s in same
        if s.slug != src.slug
    ]
    return others, urls.compare(src.model, units=compare_text(refs, src.model))
