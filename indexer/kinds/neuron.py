"""MLP neurons: every unit has a value on every token (dense); bands over all tokens."""

from __future__ import annotations

import re

import torch

from actscope.indexer.errors import ActscopeError
from actscope.indexer.kinds.base import Forward, Source, SourceRequest, UnitKind

NEURON_HOOK = re.compile(r"^blocks\.(\d+)\.mlp\.(hook_pre|hook_mid|hook_post|hook_pre_linear)$")
SLUG_SUFFIX = {"hook_post": "mlp", "hook_pre": "mlp-pre", "hook_mid": "mlp-mid", "hook_pre_linear": "mlp-pre-linear"}


class NeuronKind(UnitKind):
    name = "neuron"
    label = "neuron"
    sparse = False
    band_basis = "all"
    # Quantiles of the activation over all indexed tokens (the seed tools' 50/75/90/95/99/99.9% edges).
    band_levels = (0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
    same_unit_across_hooks = True  # neuron n at hook_pre, hook_mid and hook_post of a layer
    dla_twin = True

    def sources(self, model, request: SourceRequest, taken: set[str]) -> list[Source]:
        """Neuron sources for --neurons (default: every layer's mlp.hook_post), none with --no-neurons."""
        if request.no_neurons:
            return []
        hooks = request.neuron_hooks or [f"blocks.{layer}.mlp.hook_post" for layer in range(model.cfg.n_layers)]
        sources = []
        for hook in hooks:
            match = NEURON_HOOK.match(hook)
            if not match or hook not in model.hook_dict:
                available = sorted(h for h in model.hook_dict if NEURON_HOOK.match(h))
                raise ActscopeError(
                    f"--neurons {hook}: not an MLP neuron hook of this model "
                    f"(available: {', '.join(available[:8])}{' ...' if len(available) > 8 else ''})"
                )
            layer = int(match.group(1))
            slug = f"{layer}-{SLUG_SUFFIX[match.group(2)]}"
            taken.add(slug)
            sources.append(Source(slug, hook, self, layer, int(model.cfg.d_mlp)))
        return sources

    def activations(self, source: Source, act: torch.Tensor, buffer, forward: Forward) -> torch.Tensor:
        return act.float()

    def output_directions(self, model, source: Source) -> torch.Tensor | None:
        """W_out[n] for a neuron at mlp.hook_post (the value W_out multiplies); none before it."""
        if not source.hook_name.endswith("mlp.hook_post"):
            return None
        return model.blocks[source.layer].mlp.W_out.detach()

    def cos_in_out(self, model, source: Source) -> torch.Tensor | None:
        mlp = model.blocks[source.layer].mlp
        w_in = mlp.W_in.detach().T  # [d_mlp, d_model]
        w_out = mlp.W_out.detach()  # [d_mlp, d_model]
        return torch.nn.functional.cosine_similarity(w_in, w_out, dim=1).float().cpu()
