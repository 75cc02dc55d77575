"""Sharded runs give the single-process index: `--shard I/N` states merged by `actscope
merge`, and `--workers N` on a local Ray cluster, a killed worker included. States of
other options, missing shards and duplicated ones are refused by name."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from fixtures_models import TINY_INDEX_OPTIONS

# The tiny model, both SAEs and the direct-effect twins (a kind that leaves the last
# position out): 96 sequences in 12 batches of 8, the first 3 of them calibration.
OPTIONS = {**TINY_INDEX_OPTIONS, "dla": True}
BATCHES = 12
FLOAT_COLUMNS = {("unit_stats", "mean"), ("unit_stats", "std")}  # sums added in another order


def _config_args(inputs: dict, **changes) -> list[str]:
    """The CLI arguments of a run of `inputs` with OPTIONS (and `changes`), --out aside."""
    options = {**OPTIONS, **changes}
    args = ["--model", inputs["model"], "--dataset", inputs["dataset"]]
    for sae in inputs["saes"]:
        args += ["--sae", sae]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is None or value is False:
            continue
        elif isinstance(value, tuple):
            args += [flag, ",".join(map(str, value))]
        else:
            args += [flag, str(value)]
    return args


def _shard(inputs: dict, index: int, count: int, directory: Path, resume: bool = False, **changes) -> str:
    """`actscope index ... --shard INDEX/COUNT --state-out DIRECTORY` of OPTIONS, which the
    command line cannot all give (--calibration-tokens, --hist-bins)."""
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.shards import Shard, check_state_dir, run_shard

    shard = Shard(index, count)
    directory = check_state_dir(str(directory), "--state-out")
    options = {**OPTIONS, **changes, "quiet": True}
    config = IndexConfig(out=str(shard.sequences_path(directory)), **inputs, **options)
    return run_shard(config, shard, directory, resume=resume)


def _invoke(*args: str):
    from actscope.cli import main

    return CliRunner().invoke(main, list(args))


def _ok(*args: str):
    result = _invoke(*args)
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    return result


def assert_same_index(actual: Path, expected: Path, n_sequences: int = 96) -> None:
    """Every table but the run record (meta: timestamps, paths, timings) equal, row by row;
    mean and std within 1e-9 relative."""
    from actscope.indexer.store.schema import TABLES

    got, want = duckdb.connect(str(actual), read_only=True), duckdb.connect(str(expected), read_only=True)
    try:
        for table in (name for name in TABLES if name != "meta"):
            columns = [row[0] for row in want.execute(f"DESCRIBE {table}").fetchall()]
            query = f"SELECT * FROM {table} ORDER BY ALL"
            a, b = got.execute(query).fetchall(), want.execute(query).fetchall()
            assert len(a) == len(b), table
            for row_a, row_b in zip(a, b):
                for column, x, y in zip(columns, row_a, row_b):
                    if (table, column) in FLOAT_COLUMNS:
                        assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-300), (table, column, row_b[:3])
                    else:
                        assert x == y or (x != x and y != y), (table, column, row_b[:3])
        assert want.execute("SELECT count(*) FROM sequences").fetchone()[0] == n_sequences
    finally:
        got.close()
        want.close()


@pytest.fixture(scope="module")
def inputs(tiny_model_dir, tiny_sae_dir, tiny_topk_sae_dir, tiny_corpus_dir) -> dict:
    return {
        "model": str(tiny_model_dir),
        "dataset": str(tiny_corpus_dir),
        "saes": [str(tiny_sae_dir), str(tiny_topk_sae_dir)],
    }


@pytest.fixture(scope="module")
def single(tmp_path_factory, inputs) -> Path:
    """The single-process index of the same options."""
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    out = tmp_path_factory.mktemp("single") / "single.duckdb"
    run_index(IndexConfig(out=str(out), **inputs, **OPTIONS))
    return out


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory, inputs) -> Path:
    """A state directory with shards 0/2 and 1/2, each run as its own command."""
    directory = tmp_path_factory.mktemp("shards") / "states"
    for index in range(2):
        _shard(inputs, index, 2, directory)
    return directory


def _meta(path: Path, key: str):
    import json

    con = duckdb.connect(str(path), read_only=True)
    try:
        return json.loads(con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()[0])
    finally:
        con.close()


def test_two_shards_merged_equal_the_single_run(tmp_path, two_shards, single):
    names = sorted(p.name for p in two_shards.iterdir())
    assert names == [
        "calibration.pt",
        "shard-0-of-2.sequences.duckdb",
        "shard-0-of-2.state",
        "shard-1-of-2.sequences.duckdb",
        "shard-1-of-2.state",
    ]
    out = tmp_path / "merged.duckdb"
    result = _ok("merge", str(two_shards), "--out", str(out))
    assert result.stdout.startswith("merged 2 shards:")
    assert_same_index(out, single)
    # Each shard held its half of the batches: a real merge, not one shard's copy.
    assert _meta(out, "shards")["ranges"] == [[0, 48], [48, 96]]


def test_five_uneven_shards_merged_equal_the_single_run(tmp_path, inputs, single):
    """12 batches in 5 shards: 2, 2, 3, 2 and 3 batches; shard 0 holds less than the
    calibration took, which the others use all the same."""
    directory = tmp_path / "states"
    for index in (3, 0, 4, 1, 2):  # any order: whichever shard comes first calibrates
        _shard(inputs, index, 5, directory)
    out = tmp_path / "merged.duckdb"
    _ok("merge", str(directory), "--out", str(out), "--quiet")
    assert _meta(out, "shards")["ranges"] == [[0, 16], [16, 32], [32, 56], [56, 72], [72, 96]]
    assert_same_index(out, single)


def test_a_merge_ties_minus_zero_with_zero_as_the_stream_does():
    """The compiled insertion compares scores as numbers (-0.0 == 0.0: the earlier token
    stays); a merge of states must keep the same one, not rank 0.0 above -0.0."""
    import torch

    from actscope.indexer.accumulate.sampling import new_examples

    def state(score: float, token: int):
        examples = new_examples(1, 1, True, 1, "cpu")
        examples.add(
            torch.tensor([0]),
            torch.tensor([score], dtype=torch.float64),
            torch.tensor([token]),
            lambda index: {"act": torch.tensor([score]), "win": torch.zeros(1, 1)},
        )
        return examples

    earlier, later = state(-0.0, 5), state(0.0, 9)
    earlier.merge(later)
    assert earlier.token.tolist() == [[5]]


@pytest.mark.parametrize("fused", [True, False])
def test_a_dense_unit_silent_on_most_tokens_keeps_its_earliest_zeros(fused):
    """Top-k ties go to the earlier token however the tokens are batched: a unit that is
    0 (or -0.0) on every token but a few keeps its earliest zeros, in one batch or two."""
    import torch

    from actscope.indexer.accumulate.calibrate import _dense_grid
    from actscope.indexer.accumulate.dense import DenseAccumulator
    from actscope.indexer.accumulate.sampling import token_keys
    from actscope.indexer.kinds.neuron import NeuronKind

    generator = torch.Generator().manual_seed(3)
    acts = torch.zeros(8, 33, 2)
    acts[:, :, 0] = torch.where(torch.rand(8, 33, generator=generator) < 0.5, -0.0, 0.0)
    acts[5, 7, 0] = 2.0  # the one value above the zeros
    acts[:, :, 1] = torch.randn(8, 33, generator=generator)
    grid = _dense_grid(acts[:2], 2, 32, 0, NeuronKind.band_levels)
    keys = token_keys(torch.arange(8 * 33).view(8, 33), 0)

    def top_tokens(parts) -> list[int]:
        accumulator = DenseAccumulator(2, grid, top_k=4, band_size=2, window=(1, 1), device="cpu", fused=fused)
        for first, last in parts:
            accumulator.update(acts[first:last].contiguous(), first, keys[first:last].contiguous())
        return accumulator.top.token[0].tolist()

    earliest = [5 * 33 + 7, 1, 2, 3]  # the 2.0, then the zeros of sequence 0 from position 1
    assert top_tokens([(0, 8)]) == earliest
    assert top_tokens([(0, 3), (3, 8)]) == earliest


def test_shard_ranges_are_whole_batches():
    from actscope.indexer.shards import Shard, shard_range

    assert [shard_range(96, Shard(i, 5), 8) for i in range(5)] == [(0, 16), (16, 32), (32, 56), (56, 72), (72, 96)]
    # A last batch that is not full stays in the last shard; more shards than batches leave some empty.
    assert [shard_range(20, Shard(i, 2), 8) for i in range(2)] == [(0, 8), (8, 20)]
    assert [shard_range(10, Shard(i, 3), 8) for i in range(3)] == [(0, 0), (0, 8), (8, 10)]


def test_counting_pre_pass_without_max_tokens(tmp_path, inputs, tiny_corpus_dir):
    """Without --max-tokens the ranges split the corpus's count of sequences, and the
    corpus's last, partial batch lands in the last shard. Run as commands, with the
    options the command line has (the default calibration takes all the batches)."""
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("colorsys.py.txt", "keyword.py.txt", "00_hostile.txt"):
        shutil.copy(Path(tiny_corpus_dir) / name, corpus / name)
    small = {**inputs, "dataset": str(corpus), "saes": []}  # the neurons only: quicker at the default 512 bins
    cli = {"max_tokens": None, "calibration_tokens": None, "hist_bins": None, "dla": False}
    options = {k: v for k, v in OPTIONS.items() if k not in cli}
    single = tmp_path / "single.duckdb"
    run_index(IndexConfig(out=str(single), **small, **options))
    n_sequences = duckdb.connect(str(single), read_only=True).execute("SELECT count(*) FROM sequences").fetchone()[0]
    assert n_sequences % OPTIONS["batch_size"] != 0 and n_sequences > 3 * OPTIONS["batch_size"]

    directory = tmp_path / "states"
    for index in range(3):
        _ok("index", *_config_args(small, **cli), "--shard", f"{index}/3", "--state-out", str(directory))
    out = tmp_path / "merged.duckdb"
    _ok("merge", str(directory), "--out", str(out))
    ranges = _meta(out, "shards")["ranges"]
    assert ranges[0][0] == 0 and ranges[-1][1] == n_sequences
    assert_same_index(out, single, n_sequences)


def test_a_shard_of_other_options_is_refused(tmp_path, inputs, two_shards):
    """Refused twice: by the state directory's calibration before the shard runs, and by
    the merge when its state is put beside the others'."""
    from actscope.indexer.errors import ActscopeError

    directory = tmp_path / "states"
    shutil.copytree(two_shards, directory)
    (directory / "shard-1-of-2.state").unlink()
    with pytest.raises(ActscopeError) as refused:
        _shard(inputs, 1, 2, directory, top_k=4)
    assert str(refused.value) == (
        f"{directory / 'calibration.pt'} was made by a run with other options "
        "(top_k: 5 in calibration.pt, 4 in this shard): give each run its own state directory"
    )

    other = tmp_path / "other"
    _shard(inputs, 1, 2, other, top_k=4)
    for name in ("shard-1-of-2.state", "shard-1-of-2.sequences.duckdb"):
        shutil.copy(other / name, directory / name)
    out = tmp_path / "merged.duckdb"
    result = _invoke("merge", str(directory), "--out", str(out))
    assert result.exit_code == 2
    assert result.stderr == (
        "error: shard-0-of-2.state and shard-1-of-2.state were made with other options "
        "(top_k: 5 in shard-0-of-2.state, 4 in shard-1-of-2.state)\n"
    )
    assert not out.exists() and not Path(str(out) + ".tmp").exists()


def test_missing_and_duplicate_shards_are_refused_by_name(tmp_path, two_shards):
    directory = tmp_path / "states"
    shutil.copytree(two_shards, directory)
    out = tmp_path / "merged.duckdb"
    shutil.copy(directory / "shard-0-of-2.state", directory / "shard-0-of-2 (copy).state")
    result = _invoke("merge", str(directory), "--out", str(out))
    assert result.exit_code == 2
    assert result.stderr == (
        "error: shard 0 of 2 is in more than one file (shard-0-of-2 (copy).state, shard-0-of-2.state): "
        "keep one of them\n"
    )
    (directory / "shard-0-of-2 (copy).state").unlink()
    (directory / "shard-1-of-2.state").unlink()
    result = _invoke("merge", str(directory), "--out", str(out))
    assert result.exit_code == 2
    assert "missing 1 of 2 shards (shard-1-of-2.state)" in result.stderr
    assert f"--shard 1/2 --state-out {directory}" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shard", "2/2", "--state-out", "S"], "--shard 2/2: I must be 0 to N-1"),
        (["--shard", "0/2"], "--shard needs --state-out DIR"),
        (["--shard", "0/2", "--state-out", "S", "--out", "x.duckdb"], "--shard writes the shard's state"),
        (["--state-out", "S", "--out", "x.duckdb"], "--state-out goes with --shard I/N"),
        (["--workers", "2", "--ray-address", "auto", "--out", "x.duckdb"], "--ray-address needs --state-dir"),
        (["--state-dir", "S", "--out", "x.duckdb"], "--ray-address and --state-dir go with --workers N"),
        ([], "--out FILE.duckdb is needed"),
        (["--shard", "0/2", "--state-out", "S", "--max-state-gb", "1"], "--max-state-gb runs its groups in one"),
        (["--workers", "2", "--out", "x.duckdb", "--max-state-gb", "1"], "--max-state-gb runs its groups in one"),
        (["--max-state-gb", "0", "--out", "x.duckdb"], "--max-state-gb 0.0: must be more than 0"),
    ],
)
def test_sharding_options_are_checked(tmp_path, inputs, args, message):
    args = [str(tmp_path / a) if a in ("S", "x.duckdb") else a for a in args]
    cli = {"calibration_tokens": None, "hist_bins": None}
    result = _invoke("index", *_config_args(inputs, **cli), *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr


# --- Ray ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One local Ray cluster for the session: 2 CPUs, no dashboard, the fault hook of
    tests/ray_faults.py in every worker."""
    import ray

    faults = tmp_path_factory.mktemp("ray-faults")
    tests = str(Path(__file__).parent)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 << 20,
        logging_level="ERROR",
        runtime_env={
            "env_vars": {
                "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                "ACTSCOPE_TEST_RAY_FAULTS": str(faults),
            },
            "worker_process_setup_hook": "ray_faults.install",
        },
    )
    yield faults
    ray.shutdown()


def _on_ray(inputs: dict, out: Path, workers: int, state_dir: Path | None = None, **changes) -> str:
    """`actscope index ... --out OUT --workers N [--state-dir DIR]` of OPTIONS on the
    session's Ray cluster."""
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.ray_run import run_on_ray
    from actscope.indexer.shards import check_state_dir

    config = IndexConfig(out=str(out), **inputs, **{**OPTIONS, **changes})
    directory = check_state_dir(str(state_dir or str(out) + ".shards"), "--state-dir")
    return run_on_ray(config, workers, directory, owned_dir=state_dir is None)


def test_each_ray_task_takes_a_gpu_or_its_share_of_the_cpus():
    from actscope.indexer.ray_run import _task_resources

    assert _task_resources({"CPU": 2.0}, 2) == {"num_cpus": 1}
    assert _task_resources({"CPU": 16.0}, 3) == {"num_cpus": 5}
    assert _task_resources({"CPU": 2.0}, 8) == {"num_cpus": 1}
    assert _task_resources({"CPU": 32.0, "GPU": 8.0}, 8) == {"num_gpus": 1, "num_cpus": 1}
    assert _task_resources({"CPU": 32.0, "GPU": 8.0}, 8, gpus=False) == {"num_cpus": 4}  # --device cpu


@pytest.mark.slow
def test_two_ray_workers_equal_the_single_run(tmp_path, inputs, single, ray_cluster):
    out = tmp_path / "ray.duckdb"
    assert _on_ray(inputs, out, 2).startswith("merged 2 shards:")
    assert_same_index(out, single)
    shards = _meta(out, "shards")
    assert shards["ranges"] == [[0, 48], [48, 96]] and shards["merged_by"] == "ray, 2 workers"
    assert shards["resumed_from"] == []
    assert not Path(str(out) + ".shards").exists(), "the default state directory is removed once the index is written"


@pytest.mark.slow
def test_a_killed_ray_worker_is_retried_from_its_checkpoint(tmp_path, inputs, single, ray_cluster):
    """Shard 1's worker is killed (SIGKILL) right after its first checkpoint, after batch 7
    of 6..11; Ray runs the task again, which resumes there."""
    marker = ray_cluster / "shard-1-of-2.sequences.duckdb.ckpt.kill"
    marker.touch()
    out = tmp_path / "ray.duckdb"
    states = tmp_path / "states"
    _on_ray(inputs, out, 2, states, checkpoint_every=2)
    assert not marker.exists() and marker.with_suffix(".fired").exists(), "the worker was not killed"
    assert _meta(out, "shards")["resumed_from"] == [64]  # 8 batches of 8 sequences done, as checkpointed
    assert_same_index(out, single)
    assert list(states.iterdir()) == [], "a given state directory is emptied of the run's files, and kept"
