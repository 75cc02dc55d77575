"""Why a unit fired on a token, computed live: ablation attribution and the minimal
left-truncated example.

Runs on the live model in the live worker (app/live_service.py), through the same
`ActivationRunner` as every activation, so it works for every unit kind the registry
knows. The model sees the sequence from BOS to the focus (plus the kind's `tail`: a
direct-effect twin reads the token after the focus).

- Ablation: one batch, a row per window position from the window's start (never BOS)
  up to and including the focus, plus the clean row. `replace` swaps that token for the
  baseline token; `noise` adds Gaussian noise to its embedding at `hook_embed`, sigma
  times the per-dimension std of W_E's rows (over the vocabulary, unbiased), averaged
  over `draws` seeded draws. Draw d of the j-th ablated position is entry [d, j] of
  `torch.randn((draws, n_positions, d_model), generator=torch.Generator().manual_seed(seed))`.
- Truncation: one batch of every suffix ending at the focus and starting in the window
  (BOS prepended to each); the shortest whose focus activation keeps `threshold` of the
  full one (same sign, at least threshold times its size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from actscope.app.live import LiveModel

METHODS = ("replace", "noise")
EMBED_HOOK = "hook_embed"
# Floats of unit activations one forward pass may hold ([rows, len, n_units]): past this
# the rows of one example go in several passes (a wide SAE over a long context).
MAX_FLOATS_PER_PASS = 1 << 25


@dataclass(frozen=True)
class Ablation:
    """How a token is ablated: replaced by `baseline`, or noised (sigma, draws, seed)."""

    method: str = "replace"
    baseline: int = 0
    sigma: float = 1.0
    draws: int = 8
    seed: int = 0


@dataclass(frozen=True)
class Target:
    """What to explain: unit `index` of source `slug` at position `focus` of `ids` (BOS
    first, running at least to the focus plus the kind's tail); `first` is the first
    position ablated and the earliest start of a truncation (>= 1: never BOS)."""

    slug: str
    index: int
    ids: tuple[int, ...]
    focus: int
    first: int

    def rows_ablated(self, ablation: Ablation) -> int:
        n = self.focus - self.first + 1
        return 1 + n * (ablation.draws if ablation.method == "noise" else 1)

    def ablation_tokens(self, ablation: Ablation, tail: int) -> int:
        """Model tokens the ablation pass runs (what the client's live budget pays)."""
        return self.rows_ablated(ablation) * (self.focus + 1 + tail)

    def truncation_tokens(self, tail: int) -> int:
        """Model tokens the truncation pass runs, with the whole prefix once."""
        suffixes = sum(self.focus - s + 2 + tail for s in range(self.first, self.focus + 1))
        return suffixes + self.focus + 1 + tail


@dataclass(frozen=True)
class Explained:
    act: float  # the focus activation on the whole prefix
    ablated: list[float]  # per position first..focus: the focus activation with it ablated
    truncation_start: int | None  # the minimal example's first sequence position, or None
    truncation_act: float | None


def keeps(value: float, full: float, threshold: float) -> bool:
    """Whether `value` keeps `threshold` of `full`: same side of 0, at least that share."""
    if full == 0:  # nothing fired: no suffix "keeps" it
        return False
    return value >= threshold * full if full > 0 else value <= threshold * full


def explain(live: LiveModel, target: Target, ablation: Ablation, threshold: float) -> Explained:
    import torch

    source = live.sources[target.slug]
    tail = source.kind.tail
    ids = list(target.ids[: target.focus + 1 + tail])
    positions = list(range(target.first, target.focus + 1))
    noise = None
    if ablation.method == "replace":
        rows = [ids] + [ids[:p] + [ablation.baseline] + ids[p + 1 :] for p in positions]
    else:
        rows = [ids] * (1 + len(positions) * ablation.draws)
        w_e = live.loaded.model.W_E.detach().float()
        scale = ablation.sigma * w_e.std(dim=0)  # [d_model]
        generator = torch.Generator().manual_seed(ablation.seed)
        draws = torch.randn((ablation.draws, len(positions), w_e.shape[1]), generator=generator) * scale.cpu()
        # Row 1 + j * draws + d: position j, draw d.
        noise = (positions, draws.transpose(0, 1).reshape(-1, w_e.shape[1]))
    values = focus_values(live, target.slug, target.index, rows, [target.focus] * len(rows), noise)
    full = float(values[0])
    if ablation.method == "replace":
        ablated = values[1:]
    else:
        ablated = values[1:].reshape(len(positions), ablation.draws).mean(axis=1)
    cut = truncate(live, target, threshold, full)
    return Explained(full, [float(v) for v in ablated], cut.start, cut.act)


@dataclass(frozen=True)
class Truncation:
    full: float  # the focus activation on the whole prefix
    start: int | None  # the minimal example's first sequence position (None: no suffix keeps enough)
    act: float | None  # its focus activation


def truncate(live: LiveModel, target: Target, threshold: float, full: float | None = None) -> Truncation:
    """The shortest suffix ending at the focus (BOS before it), starting at `first` or
    later, that keeps `threshold` of the full activation (`full`, or run here too)."""
    source = live.sources[target.slug]
    ids = list(target.ids[: target.focus + 1 + source.kind.tail])
    starts = list(range(target.focus, target.first - 1, -1))  # shortest first
    rows = [[ids[0]] + ids[s:] for s in starts]
    focus = [target.focus - s + 1 for s in starts]
    if full is None:
        rows, focus = [ids] + rows, [target.focus] + focus
    values = focus_values(live, target.slug, target.index, rows, focus).tolist()
    if full is None:
        full = values.pop(0)
    found = next((i for i, v in enumerate(values) if keeps(v, full, threshold)), None)
    if found is None:
        return Truncation(full, None, None)
    return Truncation(full, starts[found], values[found])


def focus_values(
    live: LiveModel,
    slug: str,
    index: int,
    rows: list[list[int]],
    focus: list[int],
    noise: tuple[list[int], object] | None = None,
) -> np.ndarray:
    """Unit `index`'s activation at position focus[r] of each row (right-padded, one
    forward pass while they fit MAX_FLOATS_PER_PASS). `noise`: (positions, [n_rows - 1,
    d_model] tensor) added at hook_embed, row 1 + j * draws + d at positions[j]."""
    import torch

    model = live.loaded.model
    runner = live.runner(slug)
    longest = max(len(r) for r in rows)
    width = max(live.sources[slug].n_units, int(model.cfg.d_model))
    per_pass = max(1, MAX_FLOATS_PER_PASS // (longest * width))
    pad = live.loaded.eos_token_id
    out = np.empty(len(rows), dtype=np.float64)
    for first in range(0, len(rows), per_pass):
        chunk = rows[first : first + per_pass]
        tokens = torch.tensor([r + [pad] * (longest - len(r)) for r in chunk], dtype=torch.long)
        hooks = []
        if noise is not None:
            hooks = [(EMBED_HOOK, _noise_hook(noise[0], noise[1], first, len(chunk)))]
        with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
            acts = runner(tokens)[slug]  # [rows, longest, n_units]
        at = torch.tensor(focus[first : first + per_pass], device=acts.device)
        out[first : first + len(chunk)] = acts[torch.arange(len(chunk), device=acts.device), at, index].double().cpu()
    return out


def _noise_hook(positions: list[int], noise, first_row: int, n_rows: int):
    """A hook adding noise[r - 1] at the ablated position of each row r >= 1 of the chunk
    (rows first_row .. first_row + n_rows of the whole batch; row 0 stays clean)."""
    import torch

    draws = noise.shape[0] // len(positions)
    rows = [r for r in range(first_row, first_row + n_rows) if r >= 1]
    at = torch.tensor([positions[(r - 1) // draws] for r in rows], dtype=torch.long)
    local = torch.tensor([r - first_row for r in rows], dtype=torch.long)
    added = noise[[r - 1 for r in rows]]

    def hook(embed, hook):
        embed = embed.clone()
        embed[local, at] += added.to(embed.device, embed.dtype)
        return embed

    return hook
