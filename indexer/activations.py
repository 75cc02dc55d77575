"""One forward pass per batch, hooks only where needed, SAE encodes on the device.

The indexer and the app's live inference both go through `ActivationRunner`, so a
visitor's text is measured exactly as the corpus was.

For a TopK SAE the encode keeps the top-k values and indices it computes on the way to
the dense activations: the indexer reads those k entries per token instead of finding
the firing features again among all of them.
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
        for source in sources:
            if source.kind == "sae":
                _record_top_k(source.sae)
        self.hooks = sorted({source.hook_name for source in sources})
        layers = [hook_layer(hook) for hook in self.hooks]
        # Blocks after the last hooked one are skipped entirely; so is the unembedding.
        self.stop_at_layer = max(layers) + 1 if layers and min(layers) >= 0 else None
        if self.stop_at_layer is not None and self.stop_at_layer >= model.cfg.n_layers:
            self.stop_at_layer = None

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, consume=None) -> dict[str, torch.Tensor]:
        """Activations per source slug, each [batch, pos, n_units] float32.

        `consume(slug, activations, top_k)`, if given, is called for each source as soon as
        its activations exist, inside the forward pass: they are then still in the caches.
        `top_k` is (values, indices) [batch, pos, k] for a TopK SAE (values after the ReLU,
        so the dense activations are these values scattered at these indices), else None.
        """
        captured: set[str] = set()
        out: dict[str, torch.Tensor] = {}

        def capture(act, hook):
            captured.add(hook.name)
            for source in self.sources:
                if source.hook_name == hook.name:
                    out[source.slug] = act.float() if source.kind == "neuron" else encode(source.sae, act)
                    if consume is not None:
                        consume(source.slug, out[source.slug], _last_top_k(source))
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


class _RecordingTopK(torch.nn.Module):
    """SAELens' TopK activation (dense output), the same operations, keeping its top-k."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = torch.topk(x, k=self.k, dim=-1, sorted=False)
        values = values.relu()
        self.last = (values, indices)
        return torch.zeros_like(x).scatter_(-1, indices, values)


def _record_top_k(sae) -> None:
    """Swap a TopK SAE's activation for the recording one; other SAEs are left alone."""
    from sae_lens.saes.topk_sae import TopK

    activation = getattr(sae, "activation_fn", None)
    if type(activation) is TopK and not activation.use_sparse_activations:
        sae.activation_fn = _RecordingTopK(activation.k)


def _last_top_k(source: Source) -> tuple[torch.Tensor, torch.Tensor] | None:
    if source.kind != "sae" or not isinstance(source.sae.activation_fn, _RecordingTopK):
        return None
    values, indices = source.sae.activation_fn.last
    return values.float(), indices
