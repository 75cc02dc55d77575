"""SAE features (SAELens SAEs and transcoders): sparse, bands over the tokens where a
feature fires."""

from __future__ import annotations

import re
from typing import Any

import torch

from actscope.indexer.errors import ActscopeError
from actscope.indexer.kinds.base import Forward, Source, SourceRequest, UnitKind, hook_dims, hook_layer
from actscope.indexer.model import saes

SLUG_SUFFIX = {
    "hook_resid_post": "res-sae",
    "hook_resid_pre": "res-pre-sae",
    "hook_resid_mid": "res-mid-sae",
    "hook_mlp_out": "mlp-out-sae",
    "hook_attn_out": "att-out-sae",
    "attn.hook_z": "att-sae",
    "mlp.hook_post": "mlp-sae",
}
RESIDUAL_WIDTH_HOOKS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_mlp_out",
    "hook_attn_out",
    "mlp.hook_out",
    "attn.hook_out",
)


def residual_directions(model, hook: str, vectors: torch.Tensor) -> torch.Tensor | None:
    """vectors [n, width of `hook`] as the residual-stream directions [n, d_model] they
    write: unchanged at a residual-width hook, through the layer's W_out from
    mlp.hook_post, through W_O from attn.hook_z (heads flattened); None elsewhere."""
    layer = hook_layer(hook)
    cfg = model.cfg
    if hook.endswith(RESIDUAL_WIDTH_HOOKS) and vectors.shape[-1] == cfg.d_model:
        return vectors
    if layer < 0:
        return None
    if hook.endswith("mlp.hook_post") and vectors.shape[-1] == cfg.d_mlp:
        w_out = model.blocks[layer].mlp.W_out.detach()
        return vectors.to(w_out.dtype) @ w_out
    if hook.endswith("attn.hook_z") and vectors.shape[-1] == cfg.n_heads * cfg.d_head:
        w_o = model.blocks[layer].attn.W_O.detach()  # [n_heads, d_head, d_model]
        return vectors.to(w_o.dtype) @ w_o.reshape(-1, w_o.shape[-1])
    return None


def sae_slug(hook_name: str) -> str:
    layer = hook_layer(hook_name)
    rest = hook_name.split(".", 2)[2] if layer >= 0 else hook_name
    suffix = SLUG_SUFFIX.get(rest, re.sub(r"[^a-z0-9]+", "-", rest.lower()).strip("-") + "-sae")
    return f"{layer}-{suffix}" if layer >= 0 else suffix


class SaeKind(UnitKind):
    name = "sae"
    label = "SAE feature"
    sparse = True
    band_basis = "firing"
    hide_dead = True  # SAEs often have many dead latents: a table of them reads as noise
    # Quantiles over the tokens where the feature fires.
    band_levels = (0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
    dla_twin = True
    decoder_neighbours = True

    def sources(self, model, request: SourceRequest, taken: set[str]) -> list[Source]:
        """Check each loaded SAE against the model and describe it as a source."""
        loaded = request.saes
        hooks = [saes.sae_hook_name(sae) for _, sae in loaded]
        for hook, (spec, _) in zip(hooks, loaded):
            if hook not in model.hook_dict:
                raise ActscopeError(f"--sae {saes.sae_where(spec)}: hook {hook} does not exist in this model")
        dims = hook_dims(model, hooks) if hooks else {}
        sources = []
        for (spec, sae), hook in zip(loaded, hooks):
            d_in = int(sae.cfg.d_in)
            if dims[hook] != d_in:
                raise ActscopeError(
                    f"--sae {saes.sae_where(spec)}: d_in is {d_in} but the model's {hook} has width {dims[hook]}"
                )
            slug = sae_slug(hook)
            suffix = 2
            while slug in taken:
                slug = f"{sae_slug(hook)}-{suffix}"
                suffix += 1
            taken.add(slug)
            sae.to(model.cfg.device)
            sae.eval()
            torch.set_grad_enabled(False)
            sources.append(Source(slug, hook, self, hook_layer(hook), int(sae.cfg.d_sae), spec, sae))
        return sources

    def prepare(self, source: Source) -> None:
        saes.record_top_k(source.module)

    def activations(self, source: Source, act: torch.Tensor, buffer, forward: Forward) -> torch.Tensor:
        return saes.encode(source.module, act, buffer())

    def last_top_k(self, source: Source) -> tuple[torch.Tensor, torch.Tensor] | None:
        return saes.last_top_k(source.module)

    def output_directions(self, model, source: Source) -> torch.Tensor | None:
        """Each feature's decoder row as a residual-stream direction: W_dec at the hook it
        decodes into (a transcoder's output hook, `hook_name_out`, else the hook it reads),
        mapped through W_out from an MLP's hook_post and through W_O from attn.hook_z."""
        metadata = source.module.cfg.metadata
        hook_out = getattr(metadata, "hook_name_out", None) or source.hook_name
        return residual_directions(model, str(hook_out), source.module.W_dec.detach())

    def reload(self, row: dict[str, Any], device: str) -> Source:
        source = super().reload(row, device)
        source.module = saes.load_sae(source.spec, device)
        source.module.eval()
        return source
