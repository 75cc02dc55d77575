"""Direct effect on the next token (`--dla`): the twin of a neuron or SAE source whose
activation at position p is the unit's direct effect on the logit of the token that
actually comes next,

    act[p, u] · ((d_u − mean(d_u)) ⊙ w_ln) · W_U[:, t_{p+1}] / scale[p],

what TransformerLens' `cache.apply_ln_to_stack` followed by `@ W_U` gives for the unit's
contribution act[p, u]·d_u, biases excluded (with w_ln folded into W_U; where it is not,
the final norm's weight is applied here, as the model does). d_u is the base kind's
output direction, the mean is subtracted only where the final norm is a LayerNorm,
scale is `ln_final.hook_scale`, W_U is as processed (logits before any soft-capping).
The last position of a sequence has no next token: its value is NaN and it is not
indexed (`tail`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from actscope.indexer.errors import ActscopeError
from actscope.indexer.kinds.base import Forward, Source, SourceRequest, UnitKind

SCALE_HOOK = "ln_final.hook_scale"
SUFFIX = "-dla"


@dataclass
class DirectEffect:
    """What a twin computes with: its base source, and, made from the model's weights on
    first use, each unit's direction as the final norm sees it and the unembedding's rows."""

    base: Source
    directions: torch.Tensor | None = None  # [n_units, d_model]: (d_u − mean(d_u)) ⊙ w_ln
    unembed_rows: torch.Tensor | None = None  # [d_vocab, d_model]: W_U transposed, contiguous


def final_norm(model) -> tuple[torch.Tensor | None, bool]:
    """(w_ln, centred): the final norm's weight (None where it is folded into W_U or there
    is none) and whether it subtracts the mean (a LayerNorm, not an RMSNorm)."""
    from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm

    norm = getattr(model, "ln_final", None)
    weight = norm.w.detach() if isinstance(norm, LayerNorm | RMSNorm) else None
    return weight, isinstance(norm, LayerNorm | LayerNormPre)


def effect_directions(model, directions: torch.Tensor) -> torch.Tensor:
    """[n, d_model] residual directions as the final norm passes them on: centred where
    it is a LayerNorm, times its weight where that is not folded into W_U."""
    weight, centred = final_norm(model)
    out = directions.float()
    if centred:
        out = out - out.mean(-1, keepdim=True)
    if weight is not None:
        out = out * weight.float()
    return out


class DlaKind(UnitKind):
    name = "dla"
    label = "direct effect"
    sparse = False  # signed: a unit raises or lowers the next token's logit, on every token
    band_basis = "all"
    band_levels = (0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
    tail = 1
    examples_by = "direct effect on the next token"

    def sources(self, model, request: SourceRequest, taken: set[str]) -> list[Source]:
        return []  # all of them are twins: derived_sources

    def derived_sources(self, model, request: SourceRequest, built: list[Source], taken: set[str]) -> list[Source]:
        """With --dla, `{slug}-dla` for every source whose kind has a twin; refused for one
        that writes no direction into the residual stream."""
        if not request.dla:
            return []
        scale_hook = SCALE_HOOK if SCALE_HOOK in model.hook_dict else None  # a model without a final norm
        twins = []
        for base in built:
            if not base.kind.dla_twin:
                continue
            if base.kind.output_directions(model, base) is None:
                raise ActscopeError(
                    f"--dla: source {base.slug} ({base.hook_name}) writes no direction into the residual "
                    "stream, so it has no direct effect on the logits; --dla applies to MLP hook_post "
                    "neurons, SAE features and transcoders (index this hook in a run without --dla)"
                )
            slug = base.slug + SUFFIX
            if slug in taken:
                raise ActscopeError(f"--dla: the twin of {base.slug} would be {slug}, a slug already in use")
            taken.add(slug)
            spec = {"of": base.slug, "base": base.row(), "scale_hook": scale_hook}
            twins.append(Source(slug, base.hook_name, self, base.layer, base.n_units, spec, DirectEffect(base)))
        return twins

    def describe(self, spec: dict[str, Any]) -> str | None:
        return (
            f"Direct effect on the next token: each unit of {self.twin_of(spec)} times what its output adds to the "
            "logit of the token that actually comes next (through the final norm). Negative where it lowers it; "
            "the last token of a sequence has no next token and is not indexed."
        )

    def twin_of(self, spec: dict[str, Any]) -> str | None:
        return spec.get("of")

    def extra_hooks(self, source: Source) -> tuple[str, ...]:
        scale_hook = source.spec.get("scale_hook")
        return (scale_hook,) if scale_hook else ()

    def prepare(self, source: Source) -> None:
        base = source.module.base
        base.kind.prepare(base)

    def activations(self, source: Source, act: torch.Tensor, buffer, forward: Forward) -> torch.Tensor:
        effect: DirectEffect = source.module
        base = effect.base
        if effect.directions is None or effect.unembed_rows is None:
            model = forward.model
            directions = base.kind.output_directions(model, base)
            assert directions is not None, "checked when the twin was made"
            effect.directions = effect_directions(model, directions).to(act.device)
            effect.unembed_rows = model.W_U.detach().float().T.contiguous()
        units = base.kind.activations(base, act, buffer, forward)  # [batch, pos, n_units]
        tokens = forward.tokens
        following = torch.empty_like(tokens)
        following[:, :-1] = tokens[:, 1:]
        following[:, -1] = tokens[:, -1]  # any token: the last position is set to NaN below
        rows = effect.unembed_rows[following]  # [batch, pos, d_model]
        scale_hook = source.spec.get("scale_hook")
        if scale_hook:
            rows /= forward.acts[scale_hook].float()  # [batch, pos, 1]
        per_unit = rows @ effect.directions.T  # [batch, pos, n_units]: the effect of a unit activation of 1
        out = buffer()
        if out is None or out.shape != units.shape:
            out = per_unit.mul_(units)
        elif out.data_ptr() == units.data_ptr():
            out.mul_(per_unit)
        else:
            torch.mul(units, per_unit, out=out)
        out[:, -1, :] = float("nan")
        return out

    def output_directions(self, model, source: Source) -> torch.Tensor | None:
        """The base unit's: a twin boosts the same tokens."""
        return source.module.base.kind.output_directions(model, source.module.base)

    def cos_in_out(self, model, source: Source) -> torch.Tensor | None:
        return source.module.base.kind.cos_in_out(model, source.module.base)

    def reload(self, row: dict[str, Any], device: str) -> Source:
        from actscope.indexer.kinds import reload_source

        source = super().reload(row, device)
        source.module = DirectEffect(reload_source(source.spec["base"], device))
        return source
