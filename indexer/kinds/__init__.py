"""The unit-kind registry: every kind of unit actscope indexes, as one object each.

Adding a kind is one new `UnitKind` subclass, registered here. Code outside this package
asks a source's kind (`source.kind.sparse`, `.band_levels`, `.output_directions(...)`),
never for its name.
"""

from __future__ import annotations

from typing import Any

from actscope.indexer.errors import ActscopeError
from actscope.indexer.kinds.base import Forward, Source, SourceRequest, UnitKind, hook_layer
from actscope.indexer.kinds.direction import DirectionKind
from actscope.indexer.kinds.dla import DlaKind
from actscope.indexer.kinds.head import HeadKind
from actscope.indexer.kinds.neuron import NeuronKind
from actscope.indexer.kinds.sae import SaeKind

# In source order (direct-effect twins come after every kind's own sources).
KINDS: dict[str, UnitKind] = {
    kind.name: kind for kind in (NeuronKind(), SaeKind(), HeadKind(), DirectionKind(), DlaKind())
}

__all__ = [
    "KINDS",
    "Forward",
    "Source",
    "SourceRequest",
    "UnitKind",
    "build_sources",
    "get",
    "hook_layer",
    "reload_source",
    "twin_of",
]


def get(name: str) -> UnitKind:
    """The kind stored as `name` in an index."""
    try:
        return KINDS[name]
    except KeyError:
        raise ActscopeError(f"unknown unit kind {name!r} (known: {', '.join(KINDS)})") from None


def build_sources(model, request: SourceRequest) -> list[Source]:
    """Every source `request` asks for, kind by kind, with unique slugs."""
    sources: list[Source] = []
    taken: set[str] = set()
    for kind in KINDS.values():
        sources += kind.sources(model, request, taken)
    for kind in KINDS.values():
        sources += kind.derived_sources(model, request, list(sources), taken)
    return sources


def reload_source(row: dict[str, Any], device: str, model=None) -> Source:
    """The source of an index's `sources` row, ready for live inference on `model` (the
    loaded model the kind may take weights from, e.g. a head's W_O)."""
    kind = get(row["kind"])
    source = kind.reload(row, device)
    if model is not None:
        kind.bind(model, source)
    return source


def twin_of(kind: str, spec: dict[str, Any]) -> str | None:
    """The slug of the source that a source of `kind` with `spec` is the twin of, if any."""
    return KINDS[kind].twin_of(spec) if kind in KINDS else None
