"""The fingerprint reservoir against a direct computation: the `capacity` eligible positions
of smallest (priority, id) over the whole stream, each with its activations as float16
(NaN as 0, magnitudes past float16's range clamped), however the stream is cut into
batches, shared between sources or merged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actscope.indexer.accumulate.reservoir import (
    FLOAT16_MAX,
    RESERVOIR_TAIL,
    FingerprintReservoir,
    ReservoirBatch,
    position_priority,
)

CTX, UNITS, CAPACITY, SEED = 16, 5, 40, 3


def _stream(n_seq: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [S, CTX], activations [S, CTX, UNITS]) with NaNs and values past float16's range."""
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(n_seq, CTX, UNITS, generator=gen) * 3e4
    acts[acts.abs() > 6e4] *= 1e3
    acts[torch.rand(acts.shape, generator=gen) < 0.02] = float("nan")
    return torch.randint(0, 500, (n_seq, CTX), generator=gen), acts


def _expected(tokens: torch.Tensor, acts: torch.Tensor, first_seq: int = 0):
    """(ids, tokens, float16 values) of the reservoir, computed over the whole stream at once."""
    n_seq = tokens.shape[0]
    seqs, pos = np.meshgrid(np.arange(n_seq), np.arange(1, CTX - RESERVOIR_TAIL), indexing="ij")
    ids = ((seqs + first_seq) * CTX + pos).reshape(-1)
    priority = position_priority(torch.from_numpy(ids), SEED).numpy()
    chosen = np.sort(ids[np.lexsort((ids, priority))[:CAPACITY]])
    seq, at = chosen // CTX - first_seq, chosen % CTX
    values = acts.numpy()[seq, at].astype(np.float64)
    values = np.clip(np.nan_to_num(values, nan=0.0), -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
    return chosen, tokens.numpy()[seq, at], values


def _fed(tokens, acts, batch: int, first_seq: int = 0, others: int = 0, transpose: bool = False):
    """A reservoir fed the stream `batch` sequences at a time, beside `others` reservoirs fed
    every batch but the first (so each batch decides for two states)."""
    mine = FingerprintReservoir(UNITS, CAPACITY, "cpu")
    rest = [FingerprintReservoir(UNITS, CAPACITY, "cpu") for _ in range(others)]
    for i, start in enumerate(range(0, tokens.shape[0], batch)):
        step = ReservoirBatch.of(tokens[start : start + batch], first_seq + start, SEED)
        for other in rest if i else []:
            other.update(acts[start : start + batch] * 2, step)
        values = acts[start : start + batch]
        if transpose:  # the same values in a non-contiguous tensor
            values = values.transpose(0, 1).contiguous().transpose(0, 1)
        mine.update(values, step)
    return mine


def _check(reservoir: FingerprintReservoir, expected) -> None:
    ids, tokens, values = reservoir.final()
    assert ids.numpy().tolist() == expected[0].tolist()
    assert tokens.numpy().tolist() == expected[1].tolist()
    assert np.array_equal(values.numpy().view(np.uint16), expected[2].view(np.uint16))


@pytest.mark.parametrize("batch", [1, 3, 16, 50])
@pytest.mark.parametrize("others", [0, 2])
def test_the_reservoir_is_the_bottom_k_of_the_whole_stream(batch, others):
    tokens, acts = _stream(50)
    expected = _expected(tokens, acts)
    assert np.isnan(acts.numpy()).any() and (np.abs(acts.numpy()) > FLOAT16_MAX).any()
    _check(_fed(tokens, acts, batch, others=others, transpose=batch == 3), expected)


def test_merged_halves_and_a_state_round_trip_give_the_same_reservoir():
    tokens, acts = _stream(60, seed=1)
    expected = _expected(tokens, acts)
    first = _fed(tokens[:25], acts[:25], 4)
    second = _fed(tokens[25:], acts[25:], 7, first_seq=25)
    first.merge(second)
    _check(first, expected)
    copy = FingerprintReservoir(UNITS, CAPACITY, "cpu")
    copy.load_state_dict(first.state_dict())
    _check(copy, expected)
    assert isinstance(first.state_dict()["ids"], torch.Tensor)  # a checkpoint holds tensors, as torch.save wants


def test_float64_activations_go_through_torch_operations():
    """float64 activations (like bfloat16 ones, or any on a GPU) are copied by torch operations."""
    tokens, acts = _stream(30, seed=2)
    _check(_fed(tokens, acts.double(), 4), _expected(tokens, acts))
