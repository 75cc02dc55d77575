"""Accumulator state is mergeable and resumable: shards and interrupted runs give the
same index as one uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import torch

from fixtures_models import TINY_CTX

TABLE_ORDER = {
    "sequences": "seq",
    "unit_stats": "source, unit",
    "bands": "source, unit, band",
    "examples": "source, unit, band NULLS FIRST, rank",
    "logits": "source, unit",
    "vocab": "token_id",
    "sources": "slug",
    "models": "model",
    "reservoir": "slot",
    "fingerprints": "source, unit",
    "decoders": "source, unit",
}


def _tables(path: Path) -> dict[str, list]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY {o}").fetchall() for t, o in TABLE_ORDER.items()}
    finally:
        con.close()


def _pipeline(model_dir, sae_dir, corpus_dir, batch_size: int, max_sequences: int, calibration: int, top_k: int = 0):
    """(runner, sources, batches, grids) of the tiny model, as an index run builds them (with
    `top_k`, the grids have their top floors)."""
    from actscope.indexer.accumulate.calibrate import calibrate
    from actscope.indexer.corpus.batches import iter_batches
    from actscope.indexer.corpus.documents import iter_documents
    from actscope.indexer.kinds import SourceRequest, build_sources
    from actscope.indexer.model.loading import load_model, resolve_model_spec
    from actscope.indexer.model.runner import ActivationRunner
    from actscope.indexer.model.saes import load_sae, resolve_sae_spec

    loaded = load_model(resolve_model_spec(str(model_dir)), "cpu")
    spec = resolve_sae_spec(str(sae_dir))
    sources = build_sources(loaded.model, SourceRequest(saes=[(spec, load_sae(spec))]))
    runner = ActivationRunner(loaded.model, sources)
    batches = list(
        iter_batches(
            iter_documents(str(corpus_dir)),
            loaded.tokenizer,
            bos_token_id=loaded.bos_token_id,
            eos_token_id=loaded.eos_token_id,
            ctx=TINY_CTX,
            batch_size=batch_size,
            max_sequences=max_sequences,
        )
    )
    grids, _ = calibrate(runner, iter(batches), sources, calibration, 128, top_k)
    return runner, sources, batches, grids


def test_two_shards_merged_equal_one_run(tiny_model_dir, tiny_sae_dir, tiny_corpus_dir):
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import accumulate, new_accumulators

    runner, sources, batches, grids = _pipeline(tiny_model_dir, tiny_sae_dir, tiny_corpus_dir, 4, 40, 500)
    assert len(batches) == 10
    config = IndexConfig(
        model=str(tiny_model_dir),
        dataset=str(tiny_corpus_dir),
        out="/tmp/unused.duckdb",
        top_k=6,
        band_size=3,
        window=(4, 2),
        reservoir=300,  # of 1,200 eligible positions: the shards' draws overlap
    )

    def index(part):
        accumulators = new_accumulators(sources, grids, config, "cpu")
        with torch.inference_mode():
            for batch in part:
                accumulate(accumulators, sources, runner(batch.tokens), batch.tokens, batch.first_seq, seed=7)
        return accumulators

    whole = index(batches)
    first, second = index(batches[:6]), index(batches[6:])
    for slug in first:
        first[slug].merge(second[slug])
        one, merged = whole[slug], first[slug]
        for name in ("top", "samples"):
            a, b = getattr(one, name), getattr(merged, name)
            assert torch.equal(a.token, b.token), (slug, name)
            assert torch.equal(a.score, b.score)
            torch.testing.assert_close(a.payload["win"], b.payload["win"], equal_nan=True)
        assert one.stats.n_tokens == merged.stats.n_tokens == 40 * (TINY_CTX - 1)
        assert torch.equal(one.stats.hist, merged.stats.hist)
        assert torch.equal(one.stats.max, merged.stats.max)
        torch.testing.assert_close(one.stats.sum, merged.stats.sum)
        # A real merge, not a copy: the second shard contributed examples.
        assert (merged.top.token >= 6 * 4 * TINY_CTX).any()
        # The fingerprint reservoir: a union of the shards' cut back to its size.
        ids, tokens, acts = one.fingerprints.final()
        merged_ids, merged_tokens, merged_acts = merged.fingerprints.final()
        assert ids.numel() == 300 and torch.equal(ids, merged_ids) and torch.equal(tokens, merged_tokens)
        assert torch.equal(acts, merged_acts)
        assert (ids >= 6 * 4 * TINY_CTX).any() and (ids < 6 * 4 * TINY_CTX).any()
        assert int(second[slug].fingerprints.filled) == 300  # the second shard had its own full draw


def _index_command(model, sae, corpus, out, *extra):
    exe = Path(sys.executable).parent / "actscope"
    return [
        str(exe),
        "index",
        "--model",
        str(model),
        "--sae",
        str(sae),
        "--dataset",
        str(corpus),
        "--out",
        str(out),
        "--ctx",
        str(TINY_CTX),
        "--batch-size",
        "2",
        "--top-k",
        "4",
        "--band-size",
        "2",
        "--window",
        "4,2",
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


# 360 batches of 2 sequences: the default 8192 calibration tokens take the first 133, so
# the kill (after the first checkpoint) lands while the rest stream.
RESUME_BATCHES = 360
RESUME_TOKENS = str(TINY_CTX * 2 * RESUME_BATCHES)


@pytest.mark.slow
@pytest.mark.parametrize("torn", [False, True], ids=["partial file whole", "partial file torn"])
def test_killed_run_resumes_to_the_same_index(tmp_path, tiny_model_dir, tiny_sae_dir, tiny_corpus_dir, torn):
    """A run killed after a checkpoint resumes to the index of an uninterrupted run; also
    when the kill tore the partial file so that DuckDB refuses it (seen once in CI: its
    sequences are written again from the corpus)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, path in enumerate(sorted(Path(tiny_corpus_dir).iterdir())):
        for copy in range(6):  # a longer corpus, so the kill lands mid-run
            (corpus / f"{copy}-{i}.txt").write_text(path.read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    whole = tmp_path / "whole.duckdb"
    subprocess.run(
        _index_command(tiny_model_dir, tiny_sae_dir, corpus, whole, "--max-tokens", RESUME_TOKENS),
        check=True,
        env=env,
        timeout=600,
    )

    out = tmp_path / "resumed.duckdb"
    checkpoint = Path(str(out) + ".ckpt")
    proc = subprocess.Popen(
        _index_command(
            tiny_model_dir, tiny_sae_dir, corpus, out, "--checkpoint-every", "5", "--max-tokens", RESUME_TOKENS
        ),
        env=env,
    )
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be interrupted"
    assert checkpoint.exists()
    assert not out.exists(), "an interrupted run must not leave an index at --out"
    saved = torch.load(checkpoint, weights_only=False)
    assert 133 <= saved["batches_done"] < RESUME_BATCHES  # after calibration, before the end
    assert all(grid["top_floor"] is not None for grid in saved["grids"].values())
    partial = Path(str(out) + ".tmp")
    if torn:  # every block after DuckDB's headers overwritten, as a torn write leaves one
        with open(partial, "r+b") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(12288)
            f.write(bytes(range(256)) * max(16, (size - 12288) // 256))

    resumed = subprocess.run(
        _index_command(tiny_model_dir, tiny_sae_dir, corpus, out, "--resume", "--max-tokens", RESUME_TOKENS),
        env=env,
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ("writing it again from the corpus" in resumed.stderr) == torn
    assert out.exists() and not checkpoint.exists() and not Path(str(out) + ".tmp").exists()
    resumed_tables, whole_tables = _tables(out), _tables(whole)
    for table in TABLE_ORDER:
        assert resumed_tables[table] == whole_tables[table], table
    assert len(whole_tables["sequences"]) == 2 * RESUME_BATCHES


def test_a_partial_index_another_process_holds_is_refused_and_kept(tmp_path):
    """Only a file DuckDB cannot read back counts as torn: a partial index whose lock
    another process holds (a second run of the same --out) is refused with DuckDB's
    reason, and neither deleted nor written again."""
    from actscope.indexer.errors import ActscopeError
    from actscope.indexer.store.writer import DamagedPartialIndex, StoreWriter

    partial = tmp_path / "x.duckdb.tmp"
    con = duckdb.connect(str(partial))
    con.execute("CREATE TABLE kept AS SELECT 42 AS answer")
    con.close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys, time; c = duckdb.connect({str(partial)!r}); print(1, flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "1"
        with pytest.raises(ActscopeError, match="lock") as refused:
            StoreWriter(partial, "tiny", fresh=False)
        assert not isinstance(refused.value, DamagedPartialIndex)
    finally:
        holder.kill()
        holder.wait()
    con = duckdb.connect(str(partial), read_only=True)
    assert con.execute("SELECT answer FROM kept").fetchall() == [(42,)]
    con.close()


def test_resume_with_other_options_is_refused(tmp_path, tiny_model_dir, tiny_sae_dir, tiny_corpus_dir):
    """A checkpoint with the identity a real run of these options records is refused when
    the run resumes with another top-k, and the message names the option that changed."""
    from click.testing import CliRunner

    from actscope.cli import main
    from actscope.indexer.checkpoint import save_checkpoint
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import load

    out = tmp_path / "x.duckdb"
    args = _index_command(tiny_model_dir, tiny_sae_dir, tiny_corpus_dir, out, "--max-tokens", str(TINY_CTX * 4))[1:]
    config = IndexConfig(
        model=str(tiny_model_dir),
        dataset=str(tiny_corpus_dir),
        out=str(out),
        saes=[str(tiny_sae_dir)],
        ctx=TINY_CTX,
        batch_size=2,
        top_k=4,
        band_size=2,
        window=(4, 2),
        device="cpu",
        quiet=True,
        max_tokens=TINY_CTX * 4,
    )
    # Left behind as an interrupted run of exactly these options would leave it.
    save_checkpoint(Path(str(out) + ".ckpt"), load(config).identity, 1, 2, {}, {})
    result = CliRunner().invoke(main, [*args, "--resume", "--top-k", "5"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --resume: the checkpoint") and "other options" in result.stderr
    assert "top_k: 4 then, 5 now" in result.stderr
    # The same options are not refused as other options (the empty state then fails to load).
    same = CliRunner().invoke(main, [*args, "--resume"])
    assert "other options" not in (same.stderr or "") + str(same.exception or "")


@pytest.mark.parametrize("sae", ["standard", "topk"])
@pytest.mark.parametrize("threads, capacity", [("one", None), ("all", None), ("all", 3)])
def test_fused_cpu_kernels_equal_the_torch_path(
    tiny_model_dir, tiny_corpus_dir, threads, capacity, sae, request, monkeypatch
):
    """The numba kernels and the tensor-operation path build the same accumulator state,
    whether the units are split across one thread or all of them, and when the kernels'
    candidate buffers overflow (capacity 3) and the candidates are found again. For the
    TopK SAE the kernel reads the encode's top-k, the torch path the dense activations.
    The kernels skip tokens at or below the grids' top floors; the torch path does not."""
    import numba

    from actscope.indexer.accumulate import kernels_cpu

    if capacity is not None:
        from actscope.indexer.accumulate import dense

        monkeypatch.setattr(kernels_cpu, "CANDIDATE_CAPACITY", capacity)
        monkeypatch.setattr(dense, "MAX_SAMPLE_CAPACITY", capacity)

    sae_dir = request.getfixturevalue("tiny_sae_dir" if sae == "standard" else "tiny_topk_sae_dir")
    runner, sources, batches, grids = _pipeline(tiny_model_dir, sae_dir, tiny_corpus_dir, 6, 60, 300, top_k=5)
    assert all(bool(torch.isfinite(grid.top_floor).any()) for grid in grids.values())
    numba.set_num_threads(1 if threads == "one" else numba.config.NUMBA_NUM_THREADS)
    try:
        _compare_fused_and_torch(runner, sources, batches, grids, expect_top_k=sae == "topk")
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def _compare_fused_and_torch(runner, sources, batches, grids, expect_top_k: bool) -> None:
    from actscope.indexer.accumulate.dense import DenseAccumulator
    from actscope.indexer.accumulate.sampling import token_keys
    from actscope.indexer.accumulate.sparse import SparseAccumulator

    for source in sources:
        accumulator = SparseAccumulator if source.kind.sparse else DenseAccumulator
        paths = [
            accumulator(
                source.n_units, grids[source.slug], top_k=5, band_size=3, window=(3, 2), device="cpu", fused=fused
            )
            for fused in (True, False)
        ]
        with torch.inference_mode():
            for batch in batches:
                given = {}
                runner(batch.tokens, consume=lambda slug, acts, top_k: given.update({slug: (acts, top_k)}))
                acts, top_k = given[source.slug]
                assert (top_k is not None) == (expect_top_k and source.kind.sparse)
                if top_k is not None:  # the top-k scattered is the dense output
                    values, indices = top_k
                    assert torch.equal(torch.zeros_like(acts).scatter_(-1, indices, values), acts)
                ids = (batch.first_seq + torch.arange(batch.tokens.shape[0]))[:, None] * TINY_CTX
                keys = token_keys(ids + torch.arange(TINY_CTX)[None, :], 3)
                fused, plain = paths
                if top_k is None:
                    fused.update(acts, batch.first_seq, keys)
                else:
                    fused.update(acts, batch.first_seq, keys, top_k=top_k)
                plain.update(acts, batch.first_seq, keys)
        fused, plain = paths
        assert torch.equal(fused.stats.hist, plain.stats.hist), source.slug
        assert torch.equal(fused.stats.min, plain.stats.min) and torch.equal(fused.stats.max, plain.stats.max)
        torch.testing.assert_close(fused.stats.sum, plain.stats.sum, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(fused.stats.sum_sq, plain.stats.sum_sq, rtol=1e-5, atol=1e-3)
        for name in ("top", "samples"):
            a, b = getattr(fused, name), getattr(plain, name)
            assert torch.equal(a.token, b.token), (source.slug, name)
            torch.testing.assert_close(a.payload["win"], b.payload["win"], equal_nan=True)
        assert (fused.samples.token >= 0).sum() > 100


def test_fused_dense_buffers_every_sample_candidate_of_a_wide_source():
    """A fresh source's bands are all open: in its first batch each band of each unit takes
    up to band_size candidates, 1,536 units x 7 bands x 8 per part here, more than the
    default buffer holds. The dense buffer is sized for all of them, so the tensor path
    (which took most of the first minutes of a 100k-unit run) never runs, and the state
    is the one it gives."""
    from actscope.indexer.accumulate.calibrate import _dense_grid
    from actscope.indexer.accumulate.dense import DenseAccumulator
    from actscope.indexer.accumulate.sampling import token_keys
    from actscope.indexer.kinds.neuron import NeuronKind

    generator = torch.Generator().manual_seed(3)
    acts = torch.randn(2, 1025, 3072, generator=generator)
    grid = _dense_grid(acts[:, :64], 3072, 64, 3, NeuronKind.band_levels)
    keys = token_keys(torch.arange(2 * 1025).view(2, 1025), 0)
    fused, plain = (
        DenseAccumulator(3072, grid, top_k=3, band_size=8, window=(2, 1), device="cpu", fused=fused)
        for fused in (True, False)
    )

    def tensor_path(*args):
        raise AssertionError("the fused pass fell back to the tensor path")

    fused._update_samples = tensor_path
    fused.update(acts, 0, keys)
    plain.update(acts, 0, keys)
    assert torch.equal(fused.stats.hist, plain.stats.hist)
    assert torch.equal(fused.samples.token, plain.samples.token)
    assert torch.equal(fused.top.token, plain.top.token)
    assert int((fused.samples.token >= 0).sum()) > 3072 * 7 * 8 * 0.9


@pytest.mark.parametrize("n_pos", [129, 16385])  # 256 and 32768 rows: int16 and int32 count tables
def test_fused_dense_counts_a_bin_past_int16(n_pos):
    """dense_pass counts each batch in int16 tables when no bin can pass 2**15 and in int32
    ones otherwise: a unit whose every value lands in one bin, over 32768 tokens, still
    gets its exact count, as the torch path gives."""
    from actscope.indexer.accumulate.calibrate import _dense_grid
    from actscope.indexer.accumulate.dense import DenseAccumulator
    from actscope.indexer.accumulate.sampling import token_keys
    from actscope.indexer.kinds.neuron import NeuronKind

    generator = torch.Generator().manual_seed(5)
    acts = torch.randn(2, n_pos, 4, generator=generator)
    acts[:, :, 1] = 0.25  # one bin takes all of unit 1's tokens
    grid = _dense_grid(acts[:, :64], 4, 64, 0, NeuronKind.band_levels)
    keys = token_keys(torch.arange(2 * n_pos).view(2, n_pos), 0)
    paths = [
        DenseAccumulator(4, grid, top_k=3, band_size=2, window=(2, 1), device="cpu", fused=fused)
        for fused in (True, False)
    ]
    for accumulator in paths:
        accumulator.update(acts, 0, keys)
    fused, plain = paths
    assert torch.equal(fused.stats.hist, plain.stats.hist)
    assert int(fused.stats.hist[1].max()) == 2 * (n_pos - 1)
    assert int(fused.stats.hist.sum()) == 4 * 2 * (n_pos - 1)
    assert fused._counts.dtype == (torch.int16 if 2 * (n_pos - 1) < 1 << 15 else torch.int32)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_top_floor_lies_just_below_the_kth_largest_calibration_value(kind):
    """Grid.top_floor is strictly below each unit's k-th largest calibration value (values
    on bin edges included) and at most one bin below it: at least k values lie above it,
    fewer than k above the next bin edge."""
    from actscope.indexer.accumulate.calibrate import _dense_grid, _sparse_grid
    from actscope.indexer.kinds.neuron import NeuronKind
    from actscope.indexer.kinds.sae import SaeKind

    generator = torch.Generator().manual_seed(11)
    k, n_units = 5, 6
    values = torch.randn(3, 41, n_units, generator=generator)
    values[0, 1:, 2] = 0.5  # unit 2: its top values tied, exactly on a bin edge
    values[:, :, 3] = -1.0  # unit 3: constant, all in bin 0 (dense), never firing (sparse)
    values[1, 1:12, 4] = 4.0  # unit 4: more than k tied at its maximum
    body = values[:, 1:, :].reshape(-1, n_units)  # BOS (position 0) is not calibrated
    if kind == "dense":
        grid = _dense_grid(values, n_units, 32, k, NeuronKind.band_levels)
        firing = [body[:, u] for u in range(n_units)]
    else:
        rows, units = (body > 0).nonzero(as_tuple=True)
        grid = _sparse_grid([(units, body[rows, units])], n_units, 32, k, SaeKind.band_levels)
        firing = [body[:, u][body[:, u] > 0] for u in range(n_units)]
    assert grid.top_floor.dtype == torch.float32
    assert float(grid.top_floor[3]) == float("-inf")  # no bin above bin 0 holds k values
    for unit in (0, 1, 2, 4, 5):
        floor = float(grid.top_floor[unit])
        unit_values = firing[unit].double()
        kth = float(unit_values.sort(descending=True).values[k - 1])
        assert floor < kth, unit
        if floor > float("-inf"):
            width = float(grid.width[unit])
            assert int((unit_values > floor).sum()) >= k
            assert int((unit_values > floor + width).sum()) < k, unit


@pytest.mark.parametrize(
    "before, after, every, expected",
    [
        (0, 3, 2, True),  # the calibration's three batches in one step pass batch 2
        (0, 3, 5, False),
        (3, 4, 2, True),
        (4, 5, 2, False),
        (4, 5, 5, True),
        (5, 9, 5, False),
    ],
)
def test_a_step_of_several_batches_passes_the_multiples_inside_it(before, after, every, expected):
    from actscope.indexer.run import _passes_multiple

    assert _passes_multiple(before, after, every) is expected


def test_calibration_rows_are_joined_without_a_copy_only_when_consecutive():
    """replay_steps hands the dense sources all calibration rows at once: a view of their
    store when the batches' rows follow one another in it, else a copy of them."""
    from actscope.indexer.accumulate.calibrate import _joined

    store = torch.arange(10 * 3 * 2, dtype=torch.float32).view(10, 3, 2)
    joined = _joined([store[0:4], store[4:8], store[8:9]])
    assert torch.equal(joined, store[:9]) and joined.data_ptr() == store.data_ptr()
    small = torch.zeros(2, 3, 2)  # as_strided past this storage would fail: it must be copied
    for parts in ([small, torch.ones(2, 3, 2)], [store[0:4], store[5:8]]):
        joined = _joined(parts)
        assert torch.equal(joined, torch.cat(parts)) and joined.data_ptr() != parts[0].data_ptr()
