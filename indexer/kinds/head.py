"""Attention heads: one source per layer and head metric, whose units are the layer's
heads. The focus token is the destination position d; a head's activation there is the
metric, computed from the head's attention pattern A (`attn.hook_pattern`, [batch, head,
d, s]), its values v (`attn.hook_v`, the head's key/value group under grouped-query
attention) or its mixed values z (`attn.hook_z`). Source position 0 is BOS; 0·ln 0 = 0.

Every metric has a value on every token (dense), never below 0; bands are quantiles
over all tokens. A head writes no single direction into the residual
stream, so it has no logit table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actscope.indexer.errors import ActscopeError
from actscope.indexer.kinds.base import Forward, Source, SourceRequest, UnitKind


@dataclass(frozen=True)
class Metric:
    """What a head metric reads: its own hook (the source's hook_name) and the others."""

    name: str
    hook: str  # attn.hook_pattern or attn.hook_z
    extra: tuple[str, ...] = ()
    help: str = ""


METRICS = {
    m.name: m
    for m in (
        Metric(
            "max-attn", "hook_pattern", help="max over s in 1..d of A[d, s]: the largest attention to a non-BOS token"
        ),
        Metric("entropy", "hook_pattern", help="-sum over s <= d of A[d, s] ln A[d, s], BOS included"),
        Metric("result-norm", "hook_z", help="||z[d] @ W_O||: the head's write to the residual stream, without b_O"),
        Metric("value-norm", "hook_z", help="||z[d]||: the norm of the attention-weighted sum of values"),
        Metric(
            "value-weighted-attn",
            "hook_pattern",
            ("hook_v",),
            help="max over s in 1..d of A[d, s] ||v[s]||",
        ),
        Metric("prev-token", "hook_pattern", help="A[d, d-1]: attention to the previous token"),
        Metric(
            "induction",
            "hook_pattern",
            help="max of A[d, j+1] over earlier positions j < d with t_j = t_d (0 if t_d is new)",
        ),
    )
}


def check_metrics(names: list[str]) -> None:
    """Refuse a --heads metric that does not exist, naming those that do."""
    for name in names:
        if name not in METRICS:
            raise ActscopeError(f"--heads {name}: no such head metric (known: {', '.join(METRICS)})")


class HeadKind(UnitKind):
    name = "head"
    label = "attention head"
    sparse = False
    band_basis = "all"
    band_levels = (0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)

    def sources(self, model, request: SourceRequest, taken: set[str]) -> list[Source]:
        """One source per layer and --heads metric, `{L}-attn-{METRIC}`, in metric order given."""
        check_metrics(request.head_metrics)
        sources = []
        for metric in dict.fromkeys(request.head_metrics):
            for layer in range(model.cfg.n_layers):
                hook = f"blocks.{layer}.attn.{METRICS[metric].hook}"
                if hook not in model.hook_dict:
                    raise ActscopeError(f"--heads {metric}: this model has no hook {hook}")
                slug = f"{layer}-attn-{metric}"
                taken.add(slug)
                source = Source(slug, hook, self, layer, int(model.cfg.n_heads), {"metric": metric})
                self.bind(model, source)
                sources.append(source)
        return sources

    def bind(self, model, source: Source) -> None:
        """result-norm keeps the layer's W_O [head, d_head, d_model], as processed."""
        if source.spec["metric"] == "result-norm":
            source.module = model.blocks[source.layer].attn.W_O.detach()

    def describe(self, spec) -> str | None:
        metric = METRICS.get(spec.get("metric", ""))
        return None if metric is None else f"{metric.name}: {metric.help}"

    def extra_hooks(self, source: Source) -> tuple[str, ...]:
        return tuple(f"blocks.{source.layer}.attn.{h}" for h in METRICS[source.spec["metric"]].extra)

    def activations(self, source: Source, act: torch.Tensor, buffer, forward: Forward) -> torch.Tensor:
        metric = source.spec["metric"]
        if metric == "value-norm":
            return act.float().norm(dim=-1)  # z [batch, pos, head, d_head] -> [batch, pos, head]
        if metric == "result-norm":
            w_o = source.module  # [head, d_head, d_model]
            return torch.einsum("bphd,hdm->bphm", act, w_o).float().norm(dim=-1)
        pattern = act.float()  # [batch, head, d, s]
        if metric == "max-attn":
            out = pattern[..., 1:].amax(dim=-1)  # causal: A[d, s > d] = 0
        elif metric == "entropy":
            out = -torch.special.xlogy(pattern, pattern).sum(dim=-1)
        elif metric == "prev-token":
            out = torch.nn.functional.pad(pattern.diagonal(offset=-1, dim1=-2, dim2=-1), (1, 0))
        elif metric == "value-weighted-attn":
            v = forward.acts[f"blocks.{source.layer}.attn.hook_v"]  # [batch, s, kv_head, d_head]
            norms = v.float().norm(dim=-1).repeat_interleave(pattern.shape[1] // v.shape[2], dim=-1)
            out = (pattern * norms.transpose(1, 2)[:, :, None, :])[..., 1:].amax(dim=-1)
        elif metric == "induction":
            out = (pattern * induction_mask(forward.tokens)[:, None]).amax(dim=-1)
        else:
            raise ActscopeError(f"unknown head metric {metric!r}")
        return out.transpose(1, 2)  # [batch, d, head]

    def attention_hook(self, layer: int) -> str | None:
        return f"blocks.{layer}.attn.hook_pattern"


def induction_mask(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, d, s] float: 1 where s = j + 1 for an earlier j < d with t_j = t_d."""
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, d, j]
    earlier = torch.ones(same.shape[1:], dtype=torch.bool, device=tokens.device).tril(-1)
    mask = same & earlier
    return torch.nn.functional.pad(mask[..., :-1], (1, 0)).float()  # shift j -> j + 1
