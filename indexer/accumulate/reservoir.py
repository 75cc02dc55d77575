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

Cheap per batch: the positions' bookkeeping (ids, priorities, tokens: a few thousand
integers) lives on the host in numpy, and which positions enter and into which slots is
decided once per batch for all sources whose reservoirs are alike (all of a run's are):
each source then only copies those rows of its activations, a block at a time. On a CPU the
gather and the float16 conversion are numpy's too: a few small torch operations per source
and batch each wake torch's thread pool, which on a busy machine waits for a free core.
Only the values [capacity, units] live on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from actscope.indexer import kinds

# The last positions of a sequence no reservoir takes: the most any kind leaves unindexed.
RESERVOIR_TAIL = max(kind.tail for kind in kinds.KINDS.values())
FLOAT16_MAX = 65504.0
STORE_BLOCK_BYTES = 1 << 20  # rows of activations gathered at a time for the reservoir: they stay in cache
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
class Offer:
    """What one reservoir state takes of some candidates: candidate `entering[i]` goes to
    slot `slots[i]`; `filled` is the state's size after."""

    slots: np.ndarray
    entering: np.ndarray
    filled: int


@dataclass
class _Decided:
    """An offer made to a reservoir state, kept by the batch for the other sources: the
    state it was made to (capacity, filled, ids, priority; tokens follow from the ids) and
    the candidates' rows in the batch."""

    capacity: int
    filled: int
    ids: np.ndarray
    priority: np.ndarray
    rows: np.ndarray
    offer: Offer


@dataclass
class ReservoirBatch:
    """What every source's reservoir reads of one step, on the host: the global ids [B*P]
    of its positions (row-major, as the rows of its activations), their token ids and
    priorities (_NONE where not eligible). The offer made to one source's state is kept
    and given to every other source in the same state: decided once per batch."""

    ids: np.ndarray
    tokens: np.ndarray
    priority: np.ndarray
    _decided: list[_Decided] = field(default_factory=list)

    @classmethod
    def of(cls, tokens: torch.Tensor, first_seq: int, seed: int) -> ReservoirBatch:
        """`tokens` [B, P]: the step's tokens (on the host, or copied there)."""
        tokens = tokens.cpu()
        batch, ctx = tokens.shape
        ids = (first_seq + torch.arange(batch))[:, None] * ctx + torch.arange(ctx)[None, :]
        priority = position_priority(ids, seed)
        priority[:, 0] = _NONE  # BOS
        if RESERVOIR_TAIL:
            priority[:, ctx - RESERVOIR_TAIL :] = _NONE
        return cls(ids.reshape(-1).numpy(), tokens.reshape(-1).numpy().astype(np.int64), priority.reshape(-1).numpy())

    def decide(self, state: FingerprintReservoir) -> tuple[np.ndarray, Offer]:
        """(rows of the candidates in the batch, the offer) for `state`, as decided for an
        earlier source in the same state, else now."""
        n = state.filled
        for d in self._decided:
            if (
                d.capacity == state.capacity
                and d.filled == n
                and np.array_equal(d.ids, state.ids[:n])
                and np.array_equal(d.priority, state.priority[:n])
            ):
                return d.rows, d.offer
        rows = np.flatnonzero(self.priority <= state.threshold())
        offer = state.plan(self.priority[rows], self.ids[rows])
        self._decided.append(_Decided(state.capacity, n, state.ids[:n].copy(), state.priority[:n].copy(), rows, offer))
        return rows, offer


class FingerprintReservoir:
    """One source's units' values at the reservoir's positions, kept in `capacity` slots
    in no particular order (`final` sorts them by position). The positions' ids,
    priorities and tokens are host (numpy) arrays; the values [capacity, U] float16 are
    on the device."""

    def __init__(self, n_units: int, capacity: int, device) -> None:
        self.n_units = n_units
        self.capacity = capacity
        self.filled = 0
        self.ids = np.full(capacity, -1, dtype=np.int64)
        self.priority = np.full(capacity, _NONE, dtype=np.int64)
        self.tokens = np.full(capacity, -1, dtype=np.int64)
        self.acts = torch.zeros((capacity, n_units), dtype=torch.float16, device=device)

    def threshold(self) -> int:
        """The priority a position must not exceed to be offered (ties go by id)."""
        if self.filled == self.capacity:
            return int(self.priority.max())
        return _NONE - 1

    def update(self, acts: torch.Tensor, batch: ReservoirBatch) -> None:
        """acts [B, P, U]: offer the step's eligible positions under the threshold."""
        rows, offer = batch.decide(self)
        if offer.entering.size == 0:
            return
        entering = rows[offer.entering]
        self._take(offer, batch.priority[entering], batch.ids[entering], batch.tokens[entering])
        self._store(offer.slots, acts, entering)

    def merge(self, other: FingerprintReservoir) -> None:
        n = other.filled
        offer = self.plan(other.priority[:n], other.ids[:n])
        if offer.entering.size == 0:
            return
        entering = offer.entering
        self._take(offer, other.priority[entering], other.ids[entering], other.tokens[entering])
        self._store(offer.slots, other.acts, entering)

    def plan(self, priority: np.ndarray, ids: np.ndarray) -> Offer:
        """Which candidates enter (those among the `capacity` smallest (priority, id) of the
        state and the candidates) and the free slots they take, in increasing order."""
        filled = self.filled
        order = np.lexsort(
            (np.concatenate([self.ids[:filled], ids]), np.concatenate([self.priority[:filled], priority]))
        )
        keep = order[: self.capacity]
        entering = keep[keep >= filled] - filled
        free = np.ones(self.capacity, dtype=bool)
        free[keep[keep < filled]] = False
        return Offer(np.flatnonzero(free)[: entering.size], entering, int(keep.size))

    def _take(self, offer: Offer, priority: np.ndarray, ids: np.ndarray, tokens: np.ndarray) -> None:
        self.priority[offer.slots] = priority
        self.ids[offer.slots] = ids
        self.tokens[offer.slots] = tokens
        self.filled = offer.filled

    def _store(self, slots: np.ndarray, values: torch.Tensor, which: np.ndarray) -> None:
        """The rows `which` of values [..., U] (flat indices over its leading dimensions) into
        `slots`, as float16 (past its range: clamped), a block of rows at a time."""
        if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float16):
            array = values.numpy()  # a strided view: a non-contiguous tensor is not copied whole
            index = np.unravel_index(which, array.shape[:-1])
            # A few rows at a time: all of them at once (thousands of rows of 65,536 SAE
            # features in the first batches) were hundreds of MB of fresh pages per batch.
            step = max(1, STORE_BLOCK_BYTES // (array.itemsize * max(1, array.shape[-1])))
            stored = self.acts.numpy()
            for first in range(0, which.size, step):
                taken = array[tuple(part[first : first + step] for part in index)]  # a copy
                if taken.dtype != np.float16:
                    # Clamped before the cast, as clamping its inf after would: float16 math is slow in numpy.
                    np.clip(taken, -FLOAT16_MAX, FLOAT16_MAX, out=taken)
                    taken[np.isnan(taken)] = 0.0
                stored[slots[first : first + step]] = taken  # cast to float16 here
            return
        rows = values.reshape(-1, values.shape[-1]).index_select(0, torch.from_numpy(which).to(values.device))
        rows = torch.nan_to_num_(rows.to(torch.float16), nan=0.0, posinf=FLOAT16_MAX, neginf=-FLOAT16_MAX)
        self.acts.index_copy_(0, torch.from_numpy(slots).to(self.acts.device), rows.to(self.acts.device))

    def final(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids [n], token ids [n], acts [n, U] float16) of the filled slots, by position."""
        order = self.by_position()
        acts = self.acts.cpu()
        return torch.from_numpy(self.ids[order]), torch.from_numpy(self.tokens[order]), acts[torch.from_numpy(order)]

    def by_position(self) -> np.ndarray:
        """The filled slots in the order `final` gives them (by position)."""
        return np.argsort(self.ids[: self.filled], kind="stable")

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids [n], token ids [n]) of `final`, without its copy of the values."""
        order = self.by_position()
        return self.ids[order], self.tokens[order]

    def state_dict(self) -> dict:
        state: dict = {k: torch.from_numpy(getattr(self, k).copy()) for k in ("ids", "priority", "tokens")}
        return {"filled": self.filled, **state, "acts": self.acts}

    def load_state_dict(self, state: dict) -> None:
        self.filled = int(state["filled"])
        for key in ("ids", "priority", "tokens"):
            setattr(self, key, state[key].cpu().numpy().astype(np.int64))
        self.acts = state["acts"]
