"""What the dense and sparse accumulators share: sampling keys, windows, example state.

Band samples use priority sampling: every token gets a random key and each
(unit, band) keeps the tokens with the smallest keys. A key is a hash of the run seed
and the token's global id (seq * ctx + pos), so it does not depend on batch size,
resumption or sharding, and merged shards keep exactly the samples one run would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from actscope.indexer.accumulate.grid import Grid
from actscope.indexer.accumulate.grouped_topk import GroupedTopK
from actscope.indexer.accumulate.reservoir import FingerprintReservoir

if TYPE_CHECKING:  # the kernels (numba) are imported on the compiled path only
    from actscope.indexer.accumulate.kernels_cpu import (
        CandidateBuffers,
        Candidates,
        ExampleState,
        UnitStats,
    )

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    # torch's >> is arithmetic on int64; mask to get the logical shift splitmix64 needs.
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def token_keys(token_ids: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform [0, 1) key with 32-bit resolution per global token id (splitmix64 finaliser)."""
    z = token_ids.to(torch.int64) * _GOLDEN + _signed(seed * 0x2545F4914F6CDD1D + 1)
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    z = z ^ _shift_right(z, 31)
    return _shift_right(z, 32).double() * 2.0**-32


def gather_windows(
    acts: torch.Tensor, b: torch.Tensor, p: torch.Tensor, u: torch.Tensor, before: int, after: int
) -> torch.Tensor:
    """[C, before+1+after] activations of unit u around (b, p); NaN outside the sequence."""
    ctx, n_units = acts.shape[1], acts.shape[2]
    positions = p[:, None] + torch.arange(-before, after + 1, device=acts.device)[None, :]
    valid = (positions >= 0) & (positions < ctx)
    # One flat index into the batch: a single gather instead of three index tensors.
    flat = (b[:, None] * ctx + positions.clamp(0, ctx - 1)) * n_units + u[:, None]
    return torch.take(acts, flat).float().masked_fill_(~valid, float("nan"))


def new_examples(n_groups: int, n: int, descending: bool, window_len: int, device) -> GroupedTopK:
    return GroupedTopK(
        n_groups,
        n,
        descending,
        payload_shapes={"act": (), "win": (window_len,)},
        payload_dtypes={"act": torch.float32, "win": torch.float32},
        device=device,
    )


def band_thresholds(samples: GroupedTopK, band_start: torch.Tensor) -> torch.Tensor:
    """[U, n_bands] key a token needs to enter each band's sample; -inf for the bands that
    no bin maps to (from grid.band_start), which never take samples."""
    empty = band_start[:, 1:] == band_start[:, :-1]
    return samples.threshold().view(empty.shape).masked_fill(empty, float("-inf"))


class RunningStats:
    """Sums for mean/std, extremes and fine-bin counts of one source.

    The number of tokens where a unit fires is not kept: it is a sum of bins (dense
    sources: the bins above 0; sparse sources: every bin, as only firing values are binned).
    """

    def __init__(self, n_units: int, n_bins: int, device) -> None:
        self.n_tokens = 0
        self.sum = torch.zeros(n_units, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros(n_units, dtype=torch.float64, device=device)
        self.max = torch.full((n_units,), float("-inf"), device=device)
        self.min = torch.full((n_units,), float("inf"), device=device)
        self.hist = torch.zeros(n_units, n_bins, dtype=torch.int64, device=device)

    def merge(self, other: RunningStats) -> None:
        self.n_tokens += other.n_tokens
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        self.max = torch.maximum(self.max, other.max)
        self.min = torch.minimum(self.min, other.min)
        self.hist += other.hist

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("n_tokens", "sum", "sum_sq", "max", "min", "hist")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def unit_stats(self) -> UnitStats:
        """The arrays the compiled passes update in place (CPU only); they are replaced by a
        merge or a load, so take them again for every pass."""
        from actscope.indexer.accumulate.kernels_cpu import UnitStats

        return UnitStats(
            sum=self.sum.numpy(),
            sum_sq=self.sum_sq.numpy(),
            min=self.min.numpy(),
            max=self.max.numpy(),
            hist=self.hist.numpy(),
        )


def example_state(examples: GroupedTopK) -> ExampleState:
    """The arrays of examples made by new_examples, for the compiled kernels (CPU only)."""
    from actscope.indexer.accumulate.kernels_cpu import ExampleState

    return ExampleState(
        score=examples.score.numpy(),
        token=examples.token.numpy(),
        act=examples.payload["act"].numpy(),
        win=examples.payload["win"].numpy(),
    )


def add_examples(
    examples: GroupedTopK,
    group,
    score,
    acts,
    b,
    p,
    units,
    first_seq: int,
    window: tuple[int, int],
    compiled: bool = False,
) -> None:
    """Merge candidate tokens (b, p) of `units` into `examples`, with their windows.

    `compiled` (CPU only): insert them one by one with kernels_cpu.insert_examples, which
    gives the same state as the tensor operations of GroupedTopK.add at a fraction of the
    cost when candidates are few, as they are after the first batches.
    """
    ctx = acts.shape[1]
    token = (first_seq + b) * ctx + p
    if compiled:
        import numba

        from actscope.indexer.accumulate.kernels_cpu import ExampleCandidates, Window, insert_examples

        offered = ExampleCandidates(
            group=group.numpy(),
            score=score.double().numpy(),
            token=token.numpy(),
            b=b.numpy(),
            p=p.numpy(),
            unit=units.numpy(),
        )
        insert_examples(
            offered,
            acts.contiguous().numpy(),
            Window(*window),
            example_state(examples),
            descending=examples.descending,
            n_parts=numba.get_num_threads(),
        )
        return

    def payload_of(index: torch.Tensor) -> dict[str, torch.Tensor]:
        bi, pi, ui = b[index], p[index], units[index]
        return {"act": acts[bi, pi, ui], "win": gather_windows(acts, bi, pi, ui, *window)}

    examples.add(group, score, token, payload_of)


@dataclass
class Summary:
    """Per unit [U], at the end of a run: tokens where it fired (activation > 0), its
    extremes, the range its histogram covers, and, for a sparse source, the tokens where
    it was silent (they get a [0, 0] histogram bin of their own)."""

    n_fired: torch.Tensor  # float64
    min: torch.Tensor
    max: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    silent: torch.Tensor | None


class MergeableAccumulator:
    """The state, saving, merging and compiled-pass plumbing shared by the dense and sparse
    accumulators."""

    stats: RunningStats
    top: GroupedTopK
    samples: GroupedTopK
    grid: Grid
    window: tuple[int, int]  # positions kept before and after an example's focus token
    fused: bool  # the compiled CPU kernels update the state, not tensor operations
    _candidates: CandidateBuffers | None = None  # of the compiled passes, made on first use

    def __init__(
        self,
        n_units: int,
        grid: Grid,
        *,
        top_k: int,
        band_size: int,
        window: tuple[int, int],
        device,
        fused: bool | None = None,
        tail: int = 0,
        reservoir: int = 0,
    ) -> None:
        """`tail`: positions at the end of every sequence that are not indexed (a kind
        whose activation needs the next token has none at the last one); `reservoir`: the
        positions of the fingerprint reservoir (0: no fingerprints)."""
        self.n_units = n_units
        self.tail = tail
        # On a CPU one fused kernel replaces the chain of tensor operations.
        self.fused = torch.device(device).type == "cpu" if fused is None else fused
        self.grid = grid.to(device)
        self.window = window
        width = window[0] + 1 + window[1]
        self.stats = RunningStats(n_units, grid.n_bins, device)  # a sparse source bins its firing values only
        self.top = new_examples(n_units, top_k, True, width, device)
        self.samples = new_examples(n_units * grid.n_bands, band_size, False, width, device)
        self.fingerprints = FingerprintReservoir(n_units, reservoir, device) if reservoir else None

    def _run_pass(
        self, kernel, inputs: tuple[torch.Tensor, ...], keys: torch.Tensor, top_threshold: torch.Tensor, order=None
    ) -> Candidates:
        """One compiled pass (kernels_cpu.dense_pass, sparse_pass or sparse_topk_pass) over the
        batch given as `inputs` (the kernel's first arguments), visiting its rows in `order`
        (default: key_order(keys, self.tail)); returns its candidates."""
        from actscope.indexer.accumulate.kernels_cpu import CandidateBuffers, CandidateTests, key_order

        if self._candidates is None:
            self._candidates = CandidateBuffers()
        found = self._candidates.reset(self._sample_capacity())
        tests = CandidateTests(
            top_threshold=top_threshold.numpy(),
            band_threshold=band_thresholds(self.samples, self.grid.band_start).numpy(),
            band_size=self.samples.n,
        )
        order = key_order(keys, self.tail) if order is None else order
        kernel(
            *(tensor.numpy() for tensor in inputs),
            keys.reshape(-1).numpy(),
            order,
            self.grid.bin_grid(),
            tests,
            self.stats.unit_stats(),
            found,
        )
        return found

    def _sample_capacity(self) -> int:
        """Band-sample candidates the compiled passes buffer per part of the units."""
        from actscope.indexer.accumulate.kernels_cpu import CANDIDATE_CAPACITY

        return CANDIDATE_CAPACITY

    def _top_threshold(self) -> torch.Tensor:
        """[U] float32: the value a token must beat to be a top-k candidate, for the compiled
        passes: the k-th best so far, or the grid's top floor where that is higher (a unit
        whose top-k is not full yet has a k-th best of -inf)."""
        threshold = self.top.threshold().float()
        floor = self.grid.top_floor
        return threshold if floor is None else torch.maximum(threshold, floor)

    def _body(self, acts: torch.Tensor) -> torch.Tensor:
        """The indexed positions of acts [B, P, ...]: BOS and the last `tail` left out."""
        return acts[:, 1 : acts.shape[1] - self.tail]

    def _add_top(self, acts: torch.Tensor, b, p, units, first_seq: int) -> None:
        """Merge candidate tokens (b, p) of `units` into the top-k, scored by activation."""
        add_examples(
            self.top, units, acts[b, p, units].double(), acts, b, p, units, first_seq, self.window, compiled=self.fused
        )

    def _add_candidates(self, found: Candidates, acts: torch.Tensor, first_seq: int, keys: torch.Tensor) -> None:
        """Merge a compiled pass's candidates into the top-k and the band samples, except a
        kind whose buffer overflowed (the caller finds those again)."""
        from actscope.indexer.accumulate.kernels_cpu import Window, insert_candidates

        with_top, with_samples = not found.top_overflowed(), not found.samples_overflowed()
        if not (with_top or with_samples):
            return
        insert_candidates(
            acts.numpy(),
            keys.reshape(-1).numpy(),
            found,
            top=example_state(self.top),  # both ExampleState: by name
            samples=example_state(self.samples),
            first_seq=first_seq,
            window=Window(*self.window),
            n_bands=self.grid.n_bands,
            with_top=with_top,
            with_samples=with_samples,
        )

    def merge(self, other: MergeableAccumulator) -> None:
        self.stats.merge(other.stats)
        self.top.merge(other.top)
        self.samples.merge(other.samples)
        if self.fingerprints is not None and other.fingerprints is not None:
            self.fingerprints.merge(other.fingerprints)

    def state_dict(self) -> dict:
        state = {"stats": self.stats.state_dict(), "top": self.top.state_dict(), "samples": self.samples.state_dict()}
        if self.fingerprints is not None:
            state["fingerprints"] = self.fingerprints.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state["stats"])
        self.top.load_state_dict(state["top"])
        self.samples.load_state_dict(state["samples"])
        if self.fingerprints is not None:
            self.fingerprints.load_state_dict(state["fingerprints"])
