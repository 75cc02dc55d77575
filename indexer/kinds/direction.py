"""Random directions, a control: N random unit vectors in one hook's space, each unit's
activation the projection of the hook's activation onto its direction.

Researchers set monosemantic-looking neurons against them. They are dense, with bands
over all tokens like neurons. The directions are normalised Gaussian draws (float32, on
the CPU) from a generator seeded with `--seed`, drawn in the order of the `--directions`
options; the index stores them (its `directions` table), so live inference projects
onto exactly the same vectors.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from actscope.indexer.errors import ActscopeError
from actscope.indexer.kinds.base import Forward, Source, SourceRequest, UnitKind, hook_layer
from actscope.indexer.kinds.neuron import NEURON_HOOK
from actscope.indexer.kinds.neuron import SLUG_SUFFIX as NEURON_SUFFIX
from actscope.indexer.kinds.sae import RESIDUAL_WIDTH_HOOKS, sae_slug

SPEC = re.compile(r"^\s*([+-]?\d+)\s*@\s*(\S+)\s*$")
PROBE_TOKENS = 5  # the probe's sequence length: a hook with a position axis shows it at dim 1


def parse_spec(text: str) -> tuple[int, str]:
    """(N, hook) of an `N@HOOK` option."""
    match = SPEC.match(text)
    if not match:
        raise ActscopeError(f"--directions {text}: expected N@HOOK, e.g. 16@blocks.1.mlp.hook_post")
    n = int(match.group(1))
    if n < 1:
        raise ActscopeError(f"--directions {text}: the number of directions must be at least 1, not {n}")
    return n, match.group(2)


def direction_slug(hook_name: str) -> str:
    """The short name neuron or SAE sources give the hook, plus `-rand` (`1-mlp-rand`,
    `1-res-pre-rand`)."""
    match = NEURON_HOOK.match(hook_name)
    if match:
        return f"{match.group(1)}-{NEURON_SUFFIX[match.group(2)]}-rand"
    return sae_slug(hook_name).removesuffix("-sae") + "-rand"


def hook_widths(model, hooks: list[str]) -> dict[str, int | None]:
    """Width of each hook's activation per token (heads flattened), or None where the
    activation has no position axis after the batch (an attention pattern's is
    [batch, head, query, key])."""
    n = min(PROBE_TOKENS, int(model.cfg.n_ctx))
    seen: dict[str, int | None] = {}

    def record(act, hook):
        per_position = act.shape[:2] == (1, n) and not (act.dim() == 4 and act.shape[2:] == (n, n))
        seen[hook.name] = int(act[0, 0].numel()) if per_position else None

    tokens = torch.zeros((1, n), dtype=torch.long, device=model.cfg.device)
    model.run_with_hooks(tokens, return_type=None, fwd_hooks=[(h, record) for h in set(hooks)])
    return seen


def draw(n: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """[n, width] float32 unit vectors: Gaussian draws, each divided by its norm."""
    vectors = torch.randn((n, width), generator=generator, dtype=torch.float32)
    return vectors / vectors.norm(dim=1, keepdim=True)


class DirectionKind(UnitKind):
    name = "direction"
    label = "random direction"
    sparse = False
    band_basis = "all"
    band_levels = (0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)  # as neurons: the two are set side by side
    control = True

    def sources(self, model, request: SourceRequest, taken: set[str]) -> list[Source]:
        """A source of N random directions per --directions N@HOOK."""
        if not request.directions:
            return []
        wanted = [parse_spec(text) for text in request.directions]
        for text, (_, hook) in zip(request.directions, wanted):
            if hook not in model.hook_dict:
                near = sorted(h for h in model.hook_dict if h.split(".")[-1] == hook.split(".")[-1])
                hint = f" (e.g. {', '.join(near[:4])})" if near else " (a full TransformerLens hook name)"
                raise ActscopeError(f"--directions {text}: this model has no hook {hook}{hint}")
        widths = hook_widths(model, [hook for _, hook in wanted])
        generator = torch.Generator().manual_seed(request.seed)
        sources = []
        for text, (n, hook) in zip(request.directions, wanted):
            width = widths[hook]
            if width is None:
                raise ActscopeError(
                    f"--directions {text}: {hook} has no activation per token position (e.g. an attention "
                    "pattern); pick a hook with one (a residual stream, an MLP's, attn.hook_z)"
                )
            slug = base = direction_slug(hook)
            suffix = 2
            while slug in taken:
                slug = f"{base}-{suffix}"
                suffix += 1
            taken.add(slug)
            vectors = draw(n, width, generator).to(model.cfg.device)
            spec = {"n": n, "width": width, "seed": request.seed, "option": text.strip()}
            sources.append(Source(slug, hook, self, hook_layer(hook), n, spec, vectors))
        return sources

    def activations(self, source: Source, act: torch.Tensor, buffer, forward: Forward) -> torch.Tensor:
        flat = act.reshape(*act.shape[:2], -1).float()  # [batch, pos, width]
        directions = source.module.T  # [width, n]
        out = buffer()
        if out is None:
            return flat @ directions
        return torch.matmul(flat, directions, out=out)

    def stored_vectors(self, source: Source) -> torch.Tensor | None:
        return source.module.detach().float().cpu()

    def output_directions(self, model, source: Source) -> torch.Tensor | None:
        """What a direction writes into the residual stream, where the hook is one step
        from it by a linear map: the direction itself in the residual stream (and at
        hook_mlp_out, hook_attn_out), direction @ W_out at mlp.hook_post, the direction
        through W_O at attn.hook_z. None elsewhere (hook_pre, hook_mid: a nonlinearity
        lies between them and the output)."""
        hook, layer = source.hook_name, source.layer
        vectors = source.module
        if hook.endswith(RESIDUAL_WIDTH_HOOKS) and vectors.shape[1] == model.cfg.d_model:
            return vectors
        if layer < 0:
            return None
        block = model.blocks[layer]
        if hook == f"blocks.{layer}.mlp.hook_post" and hasattr(block.mlp, "W_out"):
            w_out = block.mlp.W_out.detach()  # [d_mlp, d_model]
            return vectors @ w_out if w_out.shape[0] == vectors.shape[1] else None
        if hook == f"blocks.{layer}.attn.hook_z":
            w_o = block.attn.W_O.detach()  # [n_heads, d_head, d_model]
            w_o = w_o.reshape(-1, w_o.shape[-1])  # rows in hook_z's flattened (head, d_head) order
            return vectors @ w_o if w_o.shape[0] == vectors.shape[1] else None
        return None

    def describe(self, spec: dict[str, Any]) -> str | None:
        return (
            "Random directions, a control: each unit is the projection of the hook's activation onto a "
            "random unit vector, to set neurons and features against."
        )

    def reload(self, row: dict[str, Any], device: str) -> Source:
        source = super().reload(row, device)
        vectors = row.get("unit_vectors")
        if vectors is None:
            raise ActscopeError(f"source {source.slug}: the index holds no directions for it")
        source.module = torch.as_tensor(vectors, dtype=torch.float32, device=device).reshape(source.n_units, -1)
        return source
