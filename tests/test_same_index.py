"""The index of fixed inputs, table by table, against a committed reference.

The reference in tests/reference/index/ was written by the indexer as it stood before the
package was restructured, from the committed inputs in tests/reference/inputs/ (the tiny
model, a standard SAE and a TopK SAE) over the tiny corpus. A change that alters what the
indexer stores fails here. The run record (the meta table: timestamps, elapsed time, the
options with their paths) is left out, and the recorded load specs are compared without
their absolute paths. Later changes may add tables and columns; the reference's own must
stay as they are.

To rewrite the reference (only when a change of the stored index is intended):
    ACTSCOPE_WRITE_REFERENCE=1 .venv/bin/pytest tests/test_same_index.py
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures_models import TINY_INDEX_OPTIONS

REFERENCE = Path(__file__).parent / "reference"
INPUTS = REFERENCE / "inputs"
TABLES = [
    "models",
    "sources",
    "vocab",
    "sequences",
    "unit_stats",
    "bands",
    "examples",
    "logits",
    "reservoir",
    "fingerprints",
    "decoders",
]
ORDER = {
    "models": ["model"],
    "sources": ["slug"],
    "vocab": ["token_id"],
    "sequences": ["seq"],
    "unit_stats": ["source", "unit"],
    "bands": ["source", "unit", "band"],
    "examples": ["source", "unit", "band", "rank"],
    "logits": ["source", "unit"],
    "reservoir": ["slot"],
    "fingerprints": ["source", "unit"],
    "decoders": ["source", "unit"],
}
WRITING = os.environ.get("ACTSCOPE_WRITE_REFERENCE") == "1"


def _without_paths(spec: str) -> str:
    """A recorded load spec (JSON) with any absolute path cut to its last component."""
    data = json.loads(spec)
    for key in ("name", "path"):
        if isinstance(data.get(key), str) and data[key].startswith("/"):
            data[key] = Path(data[key]).name
    return json.dumps(data, sort_keys=True)


def _read_table(con, table: str) -> pa.Table:
    order = ", ".join(f'"{c}" NULLS FIRST' for c in ORDER[table])
    result = con.sql(f'SELECT * FROM "{table}" ORDER BY {order}').to_arrow_table()
    if "spec" in result.column_names:
        specs = pa.array([_without_paths(s) for s in result.column("spec").to_pylist()])
        result = result.set_column(result.column_names.index("spec"), "spec", specs)
    return result


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir, tiny_sae_dir, tiny_topk_sae_dir) -> Path:
    if WRITING:
        shutil.rmtree(INPUTS, ignore_errors=True)
        for name, directory in [("model", tiny_model_dir), ("sae", tiny_sae_dir), ("sae-topk", tiny_topk_sae_dir)]:
            shutil.copytree(directory, INPUTS / name)
    return INPUTS


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory, inputs, tiny_corpus_dir) -> Path:
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    out = tmp_path_factory.mktemp("same-index") / "reference.duckdb"
    run_index(
        IndexConfig(
            model=str(inputs / "model"),
            dataset=str(tiny_corpus_dir),
            out=str(out),
            saes=[str(inputs / "sae"), str(inputs / "sae-topk")],
            **TINY_INDEX_OPTIONS,
        )
    )
    return out


@pytest.mark.parametrize("table", TABLES)
def test_table_matches_reference(rebuilt, table):
    con = duckdb.connect(str(rebuilt), read_only=True)
    try:
        actual = _read_table(con, table)
    finally:
        con.close()
    path = REFERENCE / "index" / f"{table}.parquet"
    if WRITING:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(actual, path)
    expected = pq.read_table(path)
    assert actual.num_rows == expected.num_rows > 0
    for name in expected.column_names:
        assert name in actual.column_names, f"{table}.{name} is gone"
        want, got = expected.column(name).to_pylist(), actual.column(name).to_pylist()
        assert got == want, f"{table}.{name} differs from the reference at row {_first_difference(got, want)}"


def _first_difference(got: list, want: list) -> int:
    return next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))


# Enough state for both neuron sources together (128 units), not for both SAEs (256):
# the neurons, then each SAE on its own, three passes over the corpus.
GROUPED_STATE_GB = 0.00125


@pytest.fixture(scope="module")
def grouped(tmp_path_factory, inputs, tiny_corpus_dir) -> tuple[Path, str]:
    """(index, plan printed) of the same run in groups under --max-state-gb."""
    import contextlib
    import io

    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    out = tmp_path_factory.mktemp("grouped-index") / "grouped.duckdb"
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        run_index(
            IndexConfig(
                model=str(inputs / "model"),
                dataset=str(tiny_corpus_dir),
                out=str(out),
                saes=[str(inputs / "sae"), str(inputs / "sae-topk")],
                max_state_gb=GROUPED_STATE_GB,
                **TINY_INDEX_OPTIONS,
            )
        )
    return out, log.getvalue()


def test_grouped_run_prints_its_plan(grouped):
    _, log = grouped
    assert "384 units in 3 groups, 3 passes over the corpus" in log
    assert "group 1: 128 units" in log and "0-mlp, 1-mlp" in log
    assert "group 2: 128 units" in log and "group 3: 128 units" in log


@pytest.mark.skipif(WRITING, reason="compares with the reference being written")
@pytest.mark.parametrize("table", TABLES)
def test_grouped_run_matches_reference(grouped, table):
    """Every group streams the corpus on its own; the file holds them all, as one pass would."""
    path, _ = grouped
    con = duckdb.connect(str(path), read_only=True)
    try:
        actual = _read_table(con, table)
    finally:
        con.close()
    expected = pq.read_table(REFERENCE / "index" / f"{table}.parquet")
    assert actual.num_rows == expected.num_rows > 0
    for name in expected.column_names:
        want, got = expected.column(name).to_pylist(), actual.column(name).to_pylist()
        assert got == want, f"{table}.{name} differs from the reference at row {_first_difference(got, want)}"
