"""One forward pass per batch, hooks only where needed, SAE encodes on the device.

The indexer and the app's live inference both go through `ActivationRunner`, so a
visitor's text is measured exactly as the corpus was.
"""

from __future__ import annotations

import torch

from .sources import Source, hook_layer


class _AllCaptured(Exception):
    """Raised by the last capture hook: nothing after it in the forward pass is needed."""


class ActivationRunner:
    def __init__(self, model, sources: list[Source]) -> None:
        self.model = model
        self.sources = sources
        self.hooks = sorted({source.hook_name for source in sources})
        layers = [hook_layer(hook) for hook in self.hooks]
        # Blocks after the last hooked one are skipped entirely; so is the unembedding.
        self.stop_at_layer = max(layers) + 1 if layers and min(layers) >= 0 else None
        if self.stop_at_layer is not None and self.stop_at_layer >= model.cfg.n_layers:
            self.stop_at_layer = None

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, consume=None) -> dict[str, torch.Tensor]:
        """Activations per source slug, each [batch, pos, n_units] float32.

        `consume(slug, activations)`, if given, is called for each source as soon as its
        activations exist, inside the forward pass: they are then still in the caches.
        """
        captured: set[str] = set()
        out: dict[str, torch.Tensor] = {}

        def capture(act, hook):
            captured.add(hook.name)
            for source in self.sources:
                if source.hook_name == hook.name:
                    out[source.slug] = act.float() if source.kind == "neuron" else encode(source.sae, act)
                    if consume is not None:
                        consume(source.slug, out[source.slug])
            if len(captured) == len(self.hooks):
                # Stop inside the block: e.g. after mlp.hook_post, W_out is never applied.
                raise _AllCaptured

        try:
            self.model.run_with_hooks(
                tokens.to(self.model.cfg.device),
                return_type=None,
                stop_at_layer=self.stop_at_layer,
                fwd_hooks=[(hook, capture) for hook in self.hooks],
            )
        except _AllCaptured:
            pass
        return {source.slug: out[source.slug] for source in self.sources}


def encode(sae, act: torch.Tensor) -> torch.Tensor:
    """SAE feature activations [batch, pos, d_sae] for a hook activation."""
    if act.ndim == 4 and not getattr(sae, "hook_z_reshaping_mode", False):
        act = act.reshape(*act.shape[:2], -1)  # attention heads flattened, as SAEs expect
    dtype = next(sae.parameters()).dtype
    return sae.encode(act.to(dtype)).float()
