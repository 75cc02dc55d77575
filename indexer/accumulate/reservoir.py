"""Activation fingerprints: every unit's activation on one seeded reservoir of token positions.

The reservoir is the `capacity` corpus positions with the smallest priority, a 63-bit hash
of the run seed and the position's global id (seq * ctx + pos), ties broken by the smaller
id. It depends only on --seed, --ctx and the indexed positions (the corpus and
--max-tokens), never on the sources, the batch size, resumption or sharding: every source
of a run, and every index built over the same corpus with the same options, has the same
positions. A source keeps its units' values there (a bottom-k sketch, like band samples'
priority sampling), so merging two shards' states is a union cut back to `capacity`.

Eligible positions are those where every kind has a value: not BOS, and not the last
`RESERVOIR_TAIL` positions of a sequence (a kind that reads the next token has none there).

Values are kept as float16 (two bytes each, as stored): a value depends on nothing but its
own position, so the state is what the index holds and a merge is exact. float16 keeps
about three significant digits, far finer than a correlation over a few thousand
positions can tell; magnitudes past its range (65504) are clamped to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from actscope.indexer import kinds

# The last positions of a sequence no reservoir takes: the most any kind leaves unindexed.
RESERVOIR_TAIL = max(kind.tail for kind in kinds.KINDS.values())
FLOAT16_MAX = 65504.0
_NONE = torch.iinfo(torch.int64).max  # the priority of a position no reservoir takes
_MASK64 = (1 << 64) - 1
_SALT = 0x6A09E667F3BCC909  # keeps the reservoir's hash apart from the band-sampling keys'


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def position_priority(ids: torch.Tensor, seed: int) -> torch.Tensor:
    """[...] int64 priority in [0, 2**63) of global position ids (splitmix64 of the id and
    the seed, salted apart from sampling.token_keys)."""
    z = ids.to(torch.int64) * _signed(0x9E3779B97F4A7C15) + _signed(seed * 0xD1B54A32D192ED03 + _SALT)
    z = (z ^ _shift_right(z, 30)) * _signed(0xBF58476D1CE4E5B9)
    z = (z ^ _shift_right(z, 27)) * _signed(0x94D049BB133111EB)
    z = z ^ _shift_right(z, 31)
    return _shift_right(z, 1)


@dataclass
class ReservoirBatch:
    """What every source's reservoir reads of one step: the global ids [B, P] of its
    positions, their token ids, and their priorities (_NONE where not eligible)."""

    ids: torch.Tensor
    tokens: torch.Tensor
    priority: torch.Tensor

    @classmethod
    def of(cls, tokens: torch.Tensor, first_seq: int, seed: int) -> ReservoirBatch:
        batch, ctx = tokens.shape
        device = tokens.device
        ids = (first_seq + torch.arange(batch, device=device))[:, None] * ctx + torch.arange(ctx, device=device)[
            None, :
        ]
        priority = position_priority(ids, seed)
        priority[:, 0] = _NONE  # BOS
        if RESERVOIR_TAIL:
            priority[:, ctx - RESERVOIR_TAIL :] = _NONE
        return cls(ids, tokens, priority)


class FingerprintReservoir:
    """One source's units' values at the reservoir's positions, kept in `capacity` slots
    in no particular order (`final` sorts them by position)."""

    def __init__(self, n_units: int, capacity: int, device) -> None:
        self.n_units = n_units
        self.capacity = capacity
        self.filled = 0
        self.ids = torch.full((capacity,), -1, dtype=torch.int64, device=device)
        self.priority = torch.full((capacity,), _NONE, dtype=torch.int64, device=device)
        self.tokens = torch.full((capacity,), -1, dtype=torch.int64, device=device)
        self.acts = torch.zeros((capacity, n_units), dtype=torch.float16, device=device)

    def threshold(self) -> torch.Tensor:
        """The priority a position must not exceed to be offered (ties go by id), as a
        0-d tensor on the state's device (no host sync)."""
        if self.filled == self.capacity:
            return self.priority.max()
        return torch.tensor(_NONE - 1, dtype=torch.int64, device=self.priority.device)

    def update(self, acts: torch.Tensor, batch: ReservoirBatch) -> None:
        """acts [B, P, U]: offer the step's eligible positions under the threshold."""
        b, p = (batch.priority <= self.threshold()).nonzero(as_tuple=True)
        if b.numel() == 0:
            return
        rows = acts.view(-1, acts.shape[-1]) if acts.is_contiguous() else acts.reshape(-1, acts.shape[-1])
        flat = b * acts.shape[1] + p
        self._offer(batch.priority[b, p], batch.ids[b, p], batch.tokens[b, p], lambda i: rows.index_select(0, flat[i]))

    def merge(self, other: FingerprintReservoir) -> None:
        n = other.filled
        self._offer(other.priority[:n], other.ids[:n], other.tokens[:n], lambda i: other.acts[i])

    def _offer(self, priority, ids, tokens, values_of) -> None:
        """Keep the `capacity` smallest (priority, id) of the state and the candidates;
        `values_of(indices)` gives the [k, U] values of the candidates that enter."""
        filled = self.filled
        all_priority = torch.cat([self.priority[:filled], priority])
        all_ids = torch.cat([self.ids[:filled], ids])
        by_id = torch.argsort(all_ids, stable=True)
        order = by_id[torch.argsort(all_priority[by_id], stable=True)]
        keep = order[: self.capacity]
        kept_old = keep[keep < filled]
        entering = keep[keep >= filled] - filled
        if entering.numel() == 0:
            return
        free = torch.ones(self.capacity, dtype=torch.bool, device=self.ids.device)
        free[kept_old] = False
        slots = free.nonzero().squeeze(1)[: entering.numel()]
        self.priority[slots] = priority[entering]
        self.ids[slots] = ids[entering]
        self.tokens[slots] = tokens[entering].to(torch.int64)
        values = values_of(entering).to(torch.float16)  # one pass; past float16's range: inf, clamped below
        self.acts.index_copy_(0, slots, torch.nan_to_num_(values, nan=0.0, posinf=FLOAT16_MAX, neginf=-FLOAT16_MAX))
        self.filled = int(keep.numel())

    def final(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids [n], token ids [n], acts [n, U] float16) of the filled slots, by position."""
        order = torch.argsort(self.ids[: self.filled])
        return self.ids[order].cpu(), self.tokens[order].cpu(), self.acts[order].cpu()

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("filled", "ids", "priority", "tokens", "acts")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
