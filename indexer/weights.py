"""Facts read off the weights: the output tokens a unit boosts.

A unit writes its output direction (its kind says which: a neuron W_out[n], an SAE
feature W_dec[f]) into the residual stream; multiplied by the unembedding W_U that gives
the unit's direct effect on each token's logit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from actscope.indexer.kinds import Source

N_LOGIT_TOKENS = 10


@dataclass
class LogitTable:
    top_ids: torch.Tensor  # [U, n] int64
    top_values: torch.Tensor  # [U, n] float32
    bottom_ids: torch.Tensor
    bottom_values: torch.Tensor


def logit_table(model, source: Source, n: int = N_LOGIT_TOKENS, chunk: int = 512) -> LogitTable | None:
    directions = source.kind.output_directions(model, source)
    if directions is None:
        return None
    return _table(directions, model.W_U.detach(), n, chunk)


def logit_chunks(
    model, source: Source, rows: int, n: int = N_LOGIT_TOKENS, chunk: int = 512
) -> Iterator[tuple[int, LogitTable]]:
    """(first unit, table) of the source's units `rows` at a time (a multiple of `chunk`:
    the products are those of `logit_table`, block for block), so the caller can write
    each part while the next is computed; nothing for a source without output directions."""
    directions = source.kind.output_directions(model, source)
    if directions is None:
        return
    unembed = model.W_U.detach()
    rows = max(chunk, rows - rows % chunk)
    for first in range(0, directions.shape[0], rows):
        yield first, _table(directions[first : first + rows], unembed, n, chunk)


def _table(directions: torch.Tensor, unembed: torch.Tensor, n: int, chunk: int) -> LogitTable:
    n = min(n, unembed.shape[1])
    parts: list[tuple] = []
    # One [chunk, vocab] product at a time bounds memory; written into one buffer, which
    # stays paged in, where a fresh product per block is a large mapping faulted in anew.
    buffer = torch.empty((min(chunk, len(directions)), unembed.shape[1]), dtype=unembed.dtype, device=unembed.device)
    for block in directions.split(chunk):
        effect = torch.matmul(block.to(unembed.dtype), unembed, out=buffer[: len(block)])
        if effect.device.type == "cpu" and effect.dtype == torch.float32:
            from actscope.indexer.accumulate.kernels_cpu import row_extremes  # one pass instead of two sorts

            top_ids, bottom_ids = (torch.empty(len(effect), n, dtype=torch.long) for _ in range(2))
            top_values, bottom_values = (torch.empty(len(effect), n) for _ in range(2))
            row_extremes(effect.numpy(), top_ids.numpy(), top_values.numpy(), bottom_ids.numpy(), bottom_values.numpy())
            parts.append((top_ids, top_values, bottom_ids, bottom_values))
            continue
        top = effect.topk(n, dim=1)
        bottom = effect.topk(n, dim=1, largest=False)
        parts.append((top.indices, top.values, bottom.indices, bottom.values))
    return LogitTable(*(torch.cat([p[i] for p in parts]).cpu() for i in range(4)))
