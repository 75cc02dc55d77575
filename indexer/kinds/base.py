"""What every unit kind provides, and the source: a family of units of one kind at one hook.

A kind is an object (see `actscope.indexer.kinds`): it says which hook its units read,
how their activations come from that hook's activation, whether they are dense (a value
on every token) or sparse (mostly exactly zero), the tokens its bands are quantiles of,
the direction each unit writes into the residual stream, and how live inference gets
the source back from an index. Nothing outside the registry asks a kind for its name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

LAYER = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class Source:
    """One family of units: its URL slug, hook, kind, layer and width."""

    slug: str
    hook_name: str
    kind: UnitKind
    layer: int
    n_units: int
    spec: dict[str, Any] = field(default_factory=dict)  # how the kind reloads it (e.g. an SAE's path)
    module: Any = None  # what the kind computes the units with (e.g. the loaded SAE); never serialised

    def row(self) -> dict[str, Any]:
        """The source's row of the index's `sources` table (band levels aside)."""
        return {
            "slug": self.slug,
            "hook_name": self.hook_name,
            "kind": self.kind.name,
            "layer": self.layer,
            "n_units": self.n_units,
            "spec": json.dumps(self.spec),
            "band_basis": self.kind.band_basis,
        }


@dataclass
class Forward:
    """What a kind may read besides its hook's activation during one forward pass: the
    batch's tokens [batch, pos] and the activations of the hooks its `extra_hooks` named,
    captured earlier in the same pass."""

    tokens: torch.Tensor
    acts: dict[str, torch.Tensor] = field(default_factory=dict)
    model: Any = None  # the model the pass runs (for weights a kind reads lazily)


@dataclass
class SourceRequest:
    """What a run asks to index: MLP neuron hooks (empty: every layer's mlp.hook_post;
    `no_neurons`: none), the loaded SAEs as (spec, SAE) pairs, attention-head metrics,
    random directions as `N@HOOK` texts (drawn from `seed`), and whether to add
    direct-effect twins."""

    neuron_hooks: list[str] = field(default_factory=list)
    no_neurons: bool = False
    saes: list[tuple[dict[str, Any], Any]] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)
    seed: int = 0
    head_metrics: list[str] = field(default_factory=list)  # --heads: one source per layer and metric
    dla: bool = False  # --dla: a direct-effect twin of every source whose kind has `dla_twin`


class UnitKind:
    """A kind of unit. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]  # as stored in the index's sources.kind
    label: ClassVar[str] = "unit"  # what pages call one of its units ("SAE feature"), where `name` is a slug
    sparse: ClassVar[bool]  # True: most activations are exactly 0, only firing entries are accumulated
    band_basis: ClassVar[str]  # the tokens bands are quantiles of: "all" or "firing"
    band_levels: ClassVar[tuple[float, ...]]  # nominal quantile levels of the band edges
    hide_dead: ClassVar[bool] = False  # source tables hide units that never fired, by default
    control: ClassVar[bool] = False  # a baseline (e.g. random directions), left out of "top units" views
    # Unit i of a source is the same unit as unit i of the kind's other sources of its layer
    # (a neuron read at mlp.hook_pre, hook_mid and hook_post): unit pages link them.
    same_unit_across_hooks: ClassVar[bool] = False
    # Positions at the end of every sequence where the activation is undefined and which
    # are not indexed (1 for a kind that reads the next token; that position is NaN).
    tail: ClassVar[int] = 0
    dla_twin: ClassVar[bool] = False  # --dla adds a direct-effect twin of each of its sources
    examples_by: ClassVar[str] = "activation"  # what its examples are ranked by, for links between twins
    # Its output directions are learned decoder rows: the index stores them and unit pages
    # list the units whose decoder rows are closest (decoder cosine).
    decoder_neighbours: ClassVar[bool] = False

    def sources(self, model, request: SourceRequest, taken: set[str]) -> list[Source]:
        """The sources of this kind that `request` asks for, checked against the model
        (`taken`: slugs in use, which this extends)."""
        raise NotImplementedError

    def derived_sources(self, model, request: SourceRequest, built: list[Source], taken: set[str]) -> list[Source]:
        """Sources of this kind made from the sources of other kinds (`built`), once those
        exist (e.g. direct-effect twins)."""
        return []

    def twin_of(self, spec: dict[str, Any]) -> str | None:
        """The slug of the source a source of this kind (with `spec`) is the twin of."""
        return None

    def extra_hooks(self, source: Source) -> tuple[str, ...]:
        """Hooks besides `source.hook_name` whose activations `activations` reads from
        `forward.acts` (e.g. an attention head's pattern and mixed values); the source is
        computed once all of them were captured."""
        return ()

    def prepare(self, source: Source) -> None:
        """Called once before a runner computes the source's activations."""

    def activations(
        self, source: Source, act: torch.Tensor, buffer: Callable[[], torch.Tensor | None], forward: Forward
    ) -> torch.Tensor:
        """[batch, pos, n_units] float32 unit activations from the hook's activation `act`;
        `buffer()` gives a tensor of that shape to write them into, or None; `forward`: the
        pass's tokens and the activations of `extra_hooks`."""
        raise NotImplementedError

    def last_top_k(self, source: Source) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(values, indices) [batch, pos, k] of the last `activations` when only k units per
        token can fire and the kind kept them (values >= 0; their scatter is the activations)."""
        return None

    def output_directions(self, model, source: Source) -> torch.Tensor | None:
        """[n_units, d_model] direction each unit writes into the residual stream, if any."""
        return None

    def stored_vectors(self, source: Source) -> torch.Tensor | None:
        """[n_units, width] vectors the index stores for the source's units (its
        `directions` table), which `reload` gets back as row["unit_vectors"]."""
        return None

    def cos_in_out(self, model, source: Source) -> torch.Tensor | None:
        """[n_units] cosine between each unit's input and output weights, where it has both."""
        return None

    def attention_hook(self, layer: int) -> str | None:
        """The hook of the attention pattern [batch, head, d, s] whose focus row the
        examples of a unit of this kind at `layer` show (a head's unit index is its head:
        where the focus token attends); None for kinds without one."""
        return None

    def describe(self, spec: dict[str, Any]) -> str | None:
        """What a source's activation is, in one line, beyond its hook (e.g. a head metric's
        definition); None when the hook says it all."""
        return None

    def bind(self, model, source: Source) -> None:
        """Take from the loaded model what `activations` needs beyond the hooks (e.g. a
        head's W_O); called for sources built from the model and reloaded sources alike."""

    def reload(self, row: dict[str, Any], device: str) -> Source:
        """The source of an index's `sources` row, ready to compute (for live inference)."""
        spec = json.loads(row["spec"]) if isinstance(row["spec"], str) else dict(row["spec"])
        return Source(row["slug"], row["hook_name"], self, int(row["layer"]), int(row["n_units"]), spec)


def hook_layer(hook_name: str) -> int:
    match = LAYER.match(hook_name)
    return int(match.group(1)) if match else -1


def hook_dims(model, hooks: list[str]) -> dict[str, int]:
    """Width of each hook's activation (heads flattened), from a two-token forward."""
    seen: dict[str, int] = {}

    def record(act, hook):
        seen[hook.name] = int(act[0, 0].numel())

    tokens = torch.zeros((1, 2), dtype=torch.long, device=model.cfg.device)
    model.run_with_hooks(tokens, return_type=None, fwd_hooks=[(h, record) for h in set(hooks)])
    return seen
