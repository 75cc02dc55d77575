"""The compiled CPU kernels take their arrays as named records (kernels_cpu): the records
hold the accumulators' own arrays, numba compiles the kernels for them, and no kernel
writes through a record's field inside its parallel loop, where numba drops the write."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest
import torch


def _accumulators(monkeypatch):
    """(dense, sparse) fused accumulators of 8 units, updated with two batches each (the
    sparse one through the TopK pass and the plain sparse pass)."""
    from actscope.indexer.accumulate import kernels_cpu
    from actscope.indexer.accumulate.calibrate import _dense_grid, _sparse_grid
    from actscope.indexer.accumulate.dense import DenseAccumulator
    from actscope.indexer.accumulate.sampling import token_keys
    from actscope.indexer.accumulate.sparse import SparseAccumulator
    from actscope.indexer.kinds.neuron import NeuronKind
    from actscope.indexer.kinds.sae import SaeKind

    generator = torch.Generator().manual_seed(3)
    acts = torch.randn(2, 33, 8, generator=generator)
    keys = token_keys(torch.arange(2 * 33).view(2, 33), 0)
    options = dict(top_k=2, band_size=2, window=(2, 1), device="cpu", fused=True)
    # No top floor and small candidate buffers: the first batch's candidates overflow, so
    # the top-k is filled through insert_examples too.
    monkeypatch.setattr(kernels_cpu, "CANDIDATE_CAPACITY", 4)
    dense = DenseAccumulator(8, _dense_grid(acts, 8, 16, 0, NeuronKind.band_levels), **options)
    values, indices = acts.relu().topk(3, dim=-1)
    firing = torch.zeros_like(acts).scatter_(-1, indices, values)
    body = firing[:, 1:].reshape(-1, 8)
    rows, units = (body > 0).nonzero(as_tuple=True)
    sparse = SparseAccumulator(8, _sparse_grid([(units, body[rows, units])], 8, 16, 2, SaeKind.band_levels), **options)
    for first_seq in (0, 2):
        dense.update(acts, first_seq, keys)
        sparse.update(firing, first_seq, keys, top_k=(values, indices))
        sparse.update(firing, first_seq, keys)
    return dense, sparse


def test_records_hold_the_accumulators_own_arrays(monkeypatch):
    """What a kernel writes into a record lands in the accumulator's tensors: no copies."""
    from actscope.indexer.accumulate.sampling import example_state

    dense, _ = _accumulators(monkeypatch)
    stats = dense.stats.unit_stats()
    for field, tensor in zip(stats, (dense.stats.sum, dense.stats.sum_sq, dense.stats.min, dense.stats.max)):
        assert np.shares_memory(field, tensor.numpy())
    assert np.shares_memory(stats.hist, dense.stats.hist.numpy())
    grid = dense.grid.bin_grid()
    assert np.shares_memory(grid.scale, dense.grid.scale.numpy()) and grid.n_bins == dense.grid.n_bins
    assert np.shares_memory(grid.band_of_bin, dense.grid.band_of_bin.numpy())
    for examples in (dense.top, dense.samples):
        state = example_state(examples)
        assert np.shares_memory(state.score, examples.score.numpy())
        assert np.shares_memory(state.win, examples.payload["win"].numpy())
        assert np.shares_memory(state.act, examples.payload["act"].numpy())


def test_candidates_tell_an_overflow_from_a_full_buffer():
    from actscope.indexer.accumulate import kernels_cpu

    found = kernels_cpu.Candidates(
        top=np.zeros((2, 4, 3), np.int64),
        n_top=np.array([4, 0]),
        sample=np.zeros((2, 4, 4), np.int64),
        n_sample=np.array([1, 5]),
    )
    assert not found.top_overflowed() and found.samples_overflowed()


def test_kernels_are_compiled_for_the_records(monkeypatch):
    """Each kernel the accumulators call was compiled (nopython: numba has no other mode
    for njit) with the records as record types, not as anonymous tuples."""
    from numba.core import types

    from actscope.indexer.accumulate import kernels_cpu

    _accumulators(monkeypatch)
    expected = {
        "dense_pass": {"BinGrid", "CandidateTests", "UnitStats", "Candidates"},
        "sparse_pass": {"BinGrid", "CandidateTests", "UnitStats", "Candidates"},
        "sparse_topk_pass": {"BinGrid", "CandidateTests", "UnitStats", "Candidates"},
        "insert_candidates": {"Candidates", "ExampleState", "Window"},
        "insert_examples": {"ExampleCandidates", "Window", "ExampleState"},
    }
    for name, records in expected.items():
        signatures = getattr(kernels_cpu, name).nopython_signatures
        assert signatures, name
        for signature in signatures:
            named = {arg.instance_class.__name__ for arg in signature.args if isinstance(arg, types.BaseNamedTuple)}
            assert named == records, (name, signature)


def _record_fields(module) -> set[str]:
    return {
        field
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, tuple) and hasattr(value, "_fields")
        for field in value._fields
    }


def _decorator_keywords(function: ast.FunctionDef) -> dict[str, object]:
    keywords: dict[str, object] = {}
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "njit":
            keywords.update({k.arg: ast.literal_eval(k.value) for k in decorator.keywords if k.arg})
    return keywords


def _field_accesses(node: ast.AST, fields: set[str]) -> list[str]:
    """record.field expressions under node (on a plain name other than numpy's)."""
    return [
        f"{sub.value.id}.{sub.attr} (line {sub.lineno})"
        for sub in ast.walk(node)
        if isinstance(sub, ast.Attribute)
        and isinstance(sub.value, ast.Name)
        and sub.value.id != "np"
        and sub.attr in fields
    ]


def test_no_record_field_is_used_inside_a_parallel_loop():
    """numba drops writes made through a namedtuple's field inside a prange loop (numba
    issues #5872, #7135, #10338), with no error: the kernels take their records' arrays
    out before the loop, and the helpers inlined into it take arrays."""
    from actscope.indexer.accumulate import kernels_cpu

    fields = _record_fields(kernels_cpu)
    assert {"sum", "hist", "band_threshold", "n_top", "win", "before"} <= fields
    tree = ast.parse(inspect.getsource(kernels_cpu))
    offending, parallel = [], 0
    for function in (node for node in tree.body if isinstance(node, ast.FunctionDef)):
        keywords = _decorator_keywords(function)
        if keywords.get("inline") == "always":
            offending += [f"{function.name}: {a}" for a in _field_accesses(function, fields)]
        if keywords.get("parallel"):
            parallel += 1
            for loop in ast.walk(function):
                is_prange = isinstance(loop, ast.For) and getattr(getattr(loop.iter, "func", None), "id", None)
                if is_prange == "prange":
                    offending += [f"{function.name}: {a}" for a in _field_accesses(loop, fields)]
    assert parallel >= 6
    assert not offending, offending


@pytest.mark.parametrize("field", ["sum", "hist"])
def test_the_guard_sees_a_field_used_in_a_parallel_loop(field):
    """The check above finds such a use (it would pass vacuously otherwise)."""
    from actscope.indexer.accumulate import kernels_cpu

    source = f"@njit(parallel=True)\ndef bad(stats):\n    for part in prange(2):\n        stats.{field}[part] = 0\n"
    function = ast.parse(source).body[0]
    loop = function.body[0]
    assert _decorator_keywords(function) == {"parallel": True}
    assert _field_accesses(loop, _record_fields(kernels_cpu)) == [f"stats.{field} (line 4)"]
