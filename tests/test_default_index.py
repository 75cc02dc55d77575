"""End to end: `actscope index` of the bundled model + SAE over the built-in default corpus,
then the demo's reuse rule (an up-to-date index is served at once, not rebuilt)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SAE = "toy-2l/res1-topk"
MAX_TOKENS = 4096
CTX = 128


def actscope(*args: str) -> subprocess.CompletedProcess:
    """Run the installed CLI in a fresh process, as a user would."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "actscope.cli", *args], capture_output=True, text=True, env=env, timeout=600, cwd="/"
    )


@pytest.fixture(scope="module")
def default_index(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("default-index") / "toy.duckdb"
    result = actscope(
        "index",
        "--model",
        "toy-2l",
        "--sae",
        SAE,
        "--dataset",
        "default",
        "--max-tokens",
        str(MAX_TOKENS),
        "--ctx",
        str(CTX),
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.is_file()
    return out


def query(path: Path, sql: str, params=()):
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


@pytest.mark.slow
def test_index_covers_every_neuron_and_feature(default_index):
    sources = dict(query(default_index, "SELECT hook_name, n_units FROM sources"))
    assert sources == {"blocks.0.mlp.hook_post": 1024, "blocks.1.mlp.hook_post": 1024, "blocks.1.hook_resid_pre": 1024}
    per_source = dict(
        query(
            default_index,
            "SELECT s.hook_name, count(*) FROM unit_stats u JOIN sources s ON u.source = s.slug GROUP BY s.hook_name",
        )
    )
    assert per_source == sources
    ((model, n_layers, d_vocab, n_tokens),) = query(
        default_index, "SELECT model, n_layers, d_vocab, n_tokens FROM models"
    )
    assert (model, n_layers, d_vocab) == ("toy-2l", 2, 8192)
    assert n_tokens == (MAX_TOKENS // CTX) * (CTX - 1)


@pytest.mark.slow
def test_index_names_the_bundled_model_not_its_path(default_index):
    """Served from another checkout or a container, the index finds the bundled model in
    the package installed there."""
    ((spec, loader),) = query(default_index, "SELECT spec, loader FROM models")
    assert json.loads(spec) == {"kind": "bundled", "name": "toy-2l", "slug": "toy-2l", "processing": {"native": True}}
    assert json.loads(loader)["loader"] == "transformer_lens.HookedTransformer"


@pytest.mark.slow
def test_index_reads_heldout_text_first(default_index):
    from actscope.indexer.corpus import builtin as builtin_corpora
    from actscope.indexer.model.loading import load_model, resolve_model_spec

    loaded = load_model(resolve_model_spec("toy-2l"))
    ((token_ids,),) = query(default_index, "SELECT token_ids FROM sequences WHERE seq = 0")
    first_doc = next(builtin_corpora.iter_documents("mix:heldout"))
    expected = loaded.tokenizer(first_doc, add_special_tokens=False)["input_ids"][: CTX - 1]
    assert token_ids == [loaded.bos_token_id] + expected


@pytest.mark.slow
def test_neurons_and_features_have_examples(default_index):
    rows = query(default_index, "SELECT source, count(DISTINCT unit) FROM examples WHERE band IS NULL GROUP BY source")
    counts = dict(rows)
    # Every neuron has top examples (GELU is rarely exactly 0); features only where they fired.
    assert counts["0-mlp"] == counts["1-mlp"] == 1024
    assert 700 < counts["1-res-pre-sae"] < 1024
    top = query(default_index, "SELECT act, acts, pos - start FROM examples WHERE band IS NULL AND rank = 0 LIMIT 50")
    for act, acts, focus in top:
        assert acts[focus] == pytest.approx(act)
    ((fired,),) = query(
        default_index,
        "SELECT avg(n_fired::DOUBLE / n_tokens) FROM unit_stats u "
        "JOIN sources s ON u.source = s.slug WHERE s.band_basis = 'firing'",
    )
    assert 0 < fired < 0.05  # TopK with k=32 of 1024: about 3% on average


@pytest.mark.slow
def test_few_sae_features_are_dead(default_index):
    """Dead: never above 0 on an indexed token (density 0), as the source table counts them.

    Over the demo's 793,750 tokens 89 of the 1,024 features are dead (8.7%, target at most
    10%; docs/training.md). This index reads only the first 4,064 of those tokens, where
    the shipped SAE has 205 dead (20.0%); the 4,096-feature SAE it replaced had 74.3%.
    """
    ((n_units, n_dead),) = query(
        default_index,
        "SELECT count(*), count(*) FILTER (WHERE density = 0) FROM unit_stats WHERE source = '1-res-pre-sae'",
    )
    assert n_units == 1024
    assert n_dead / n_units <= 0.25


@pytest.mark.slow
def test_demo_reuses_an_up_to_date_index(default_index, tmp_path, monkeypatch):
    from actscope.indexer import demo

    meta = dict(query(default_index, "SELECT key, value FROM meta"))
    assert meta["package_version"] == demo.package_version()
    assert json.loads(meta["run_config"])["dataset"] == "default"
    # The test index was built with fewer tokens than the demo's: not current.
    assert not demo.index_is_current(default_index)
    monkeypatch.setattr(demo, "DEMO_MAX_TOKENS", MAX_TOKENS)
    monkeypatch.setattr(demo, "DEMO_BATCH", 8)
    monkeypatch.setattr(demo, "DEMO_BAND_SIZE", 8)
    # Built by `actscope index`, it does not say which bundled files it came from: not current.
    assert not demo.index_is_current(default_index)
    from actscope.indexer import bundled
    from actscope.indexer.store.writer import add_meta

    add_meta(default_index, bundled_digest=bundled.digest())
    assert demo.index_is_current(default_index)
    before = default_index.stat().st_mtime_ns
    messages = []
    assert demo.build_demo_index(default_index, log=messages.append) == default_index
    assert default_index.stat().st_mtime_ns == before
    assert "up to date" in messages[0]


@pytest.mark.slow
def test_demo_rebuilds_an_index_of_an_older_schema(default_index, tmp_path, monkeypatch):
    import shutil

    import duckdb

    from actscope.indexer import demo

    old = tmp_path / "demo.duckdb"
    shutil.copyfile(default_index, old)
    con = duckdb.connect(str(old))
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.close()
    monkeypatch.setattr(demo, "DEMO_MAX_TOKENS", MAX_TOKENS)
    monkeypatch.setattr(demo, "DEMO_BATCH", 8)
    monkeypatch.setattr(demo, "DEMO_BAND_SIZE", 8)
    from actscope.indexer import bundled
    from actscope.indexer.store.writer import add_meta

    add_meta(default_index, bundled_digest=bundled.digest())
    assert demo.index_is_current(default_index) and not demo.index_is_current(old)
    messages = []
    monkeypatch.setattr("actscope.indexer.run.run_index", lambda config: "built")  # the rebuild itself: not here
    demo.build_demo_index(old, log=messages.append)
    from actscope.indexer.store.schema import SCHEMA_VERSION

    assert f"schema version 2, this actscope writes {SCHEMA_VERSION}; rebuilding" in messages[0]


@pytest.mark.slow
def test_demo_rebuilds_after_the_bundled_files_change(default_index, tmp_path, monkeypatch):
    import shutil

    from actscope.indexer import bundled, demo
    from actscope.indexer.store.writer import add_meta

    monkeypatch.setattr(demo, "DEMO_MAX_TOKENS", MAX_TOKENS)
    monkeypatch.setattr(demo, "DEMO_BATCH", 8)
    monkeypatch.setattr(demo, "DEMO_BAND_SIZE", 8)
    stale = tmp_path / "demo.duckdb"
    shutil.copyfile(default_index, stale)
    add_meta(stale, bundled_digest=bundled.digest())
    assert demo.index_is_current(stale)
    add_meta(stale, bundled_digest="0" * 16)  # built before the SAE was retrained
    assert not demo.index_is_current(stale)
    # The digest covers the bundled files' content, not only their names.
    root = tmp_path / "bundle"
    shutil.copytree(bundled._default_root(), root)
    monkeypatch.setattr(bundled, "_default_root", lambda: root)
    before = bundled.digest()
    report = root / "training_report.json"
    report.write_text(report.read_text() + " ")
    assert bundled.digest() != before


def test_demo_rejects_foreign_files(tmp_path):
    from actscope.indexer import demo

    junk = tmp_path / "demo.duckdb"
    junk.write_bytes(b"not a database")
    assert demo.read_meta(junk) is None
    assert not demo.index_is_current(junk)
    assert not demo.index_is_current(tmp_path / "missing.duckdb")
