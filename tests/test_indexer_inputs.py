"""What the indexer accepts: HF-format model directories, jsonl/parquet corpora, options."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from fixtures_models import TINY_CTX

SMALL = dict(
    ctx=TINY_CTX,
    batch_size=4,
    max_tokens=TINY_CTX * 16,
    top_k=3,
    band_size=2,
    window=(3, 1),
    calibration_tokens=200,
    hist_bins=64,
    quiet=True,
    device="cpu",
)


def _docs(corpus_dir: Path) -> list[str]:
    return [p.read_text() for p in sorted(corpus_dir.iterdir())]


def _index(tmp_path, **options):
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    out = tmp_path / "index.duckdb"
    run_index(IndexConfig(out=str(out), **{**SMALL, **options}))
    return duckdb.connect(str(out), read_only=True)


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_text_column_of_jsonl_and_parquet(tmp_path, tiny_model_dir, tiny_corpus_dir, kind):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = _docs(tiny_corpus_dir)
    path = tmp_path / f"docs.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps({"id": i, "content": d}) + "\n" for i, d in enumerate(docs)))
    else:
        pq.write_table(pa.table({"id": list(range(len(docs))), "content": docs}), path)
    con = _index(tmp_path, model=str(tiny_model_dir), dataset=str(path), text_column="content")
    (tmp_path / "txt").mkdir()
    from_files = _index(tmp_path / "txt", model=str(tiny_model_dir), dataset=str(tiny_corpus_dir))
    # Same documents in the same order: the same sequences, whatever the container.
    assert (
        con.execute("SELECT token_ids FROM sequences ORDER BY seq").fetchall()
        == from_files.execute("SELECT token_ids FROM sequences ORDER BY seq").fetchall()
    )


def test_glob_selects_files(tmp_path, tiny_model_dir, tiny_corpus_dir):
    con = _index(tmp_path, model=str(tiny_model_dir), dataset=str(tiny_corpus_dir / "json_*.txt"))
    config = json.loads(con.execute("SELECT value FROM meta WHERE key = 'run_config'").fetchone()[0])
    assert config["dataset"].endswith("json_*.txt")
    first = con.execute("SELECT token_ids FROM sequences WHERE seq = 0").fetchone()[0]
    vocab = dict(con.execute("SELECT token_id, token FROM vocab").fetchall())
    text = "".join(vocab[t] for t in first[1:])
    assert len(text) > 20 and (tiny_corpus_dir / "json_decoder.py.txt").read_text().startswith(text)


def test_hugging_face_directory_model(tmp_path, tiny_model_dir, tiny_corpus_dir):
    """A GPT2LMHeadModel.save_pretrained directory indexes, and its neurons are HF's own."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tiny_model_dir / "tokenizer.json"), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=64,
            n_ctx=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            bos_token_id=0,
            eos_token_id=0,
        )
    ).eval()
    model_dir = tmp_path / "hf-gpt2"
    hf.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    con = _index(tmp_path, model=str(model_dir), dataset=str(tiny_corpus_dir))
    assert con.execute("SELECT model FROM models").fetchone()[0] == "hf-gpt2"
    processing = json.loads(con.execute("SELECT processing FROM models").fetchone()[0])
    assert processing["fold_ln"] is True
    tokens = torch.tensor([r[0] for r in con.execute("SELECT token_ids FROM sequences ORDER BY seq").fetchall()])
    captured = {}
    hf.transformer.h[1].mlp.act.register_forward_hook(lambda m, i, o: captured.update(act=o))
    with torch.no_grad():
        hf(tokens)
    acts = captured["act"][:, 1:, :].reshape(-1, 128).numpy()  # GPT-2 MLP width is 4 * n_embd
    stored = np.array(con.execute("SELECT max FROM unit_stats WHERE source = '1-mlp' ORDER BY unit").fetchall())[:, 0]
    np.testing.assert_allclose(stored, acts.max(0), atol=1e-4)


def test_neuron_hook_choice_and_window(tmp_path, tiny_model_dir, tiny_corpus_dir):
    con = _index(
        tmp_path,
        model=str(tiny_model_dir),
        dataset=str(tiny_corpus_dir),
        neuron_hooks=["blocks.1.mlp.hook_pre"],
        window=(2, 0),
    )
    assert con.execute("SELECT slug, hook_name FROM sources").fetchall() == [("1-mlp-pre", "blocks.1.mlp.hook_pre")]
    lengths = {r[0] for r in con.execute("SELECT len(acts) FROM examples").fetchall()}
    assert lengths <= {1, 2, 3} and 3 in lengths
    # Pre-activations go negative: density is well below one and the minimum is negative.
    density, minimum = con.execute("SELECT avg(density), min(min) FROM unit_stats").fetchone()
    assert 0.2 < density < 0.8 and minimum < 0


def test_same_seed_same_index_other_seed_other_samples(tmp_path, tiny_model_dir, tiny_corpus_dir):
    def samples(seed, where):
        where.mkdir()
        con = _index(where, model=str(tiny_model_dir), dataset=str(tiny_corpus_dir), seed=seed)
        return con.execute(
            "SELECT source, unit, band, seq, pos FROM examples WHERE band IS NOT NULL ORDER BY source, unit, band, rank"
        ).fetchall()

    first, again, other = samples(1, tmp_path / "a"), samples(1, tmp_path / "b"), samples(2, tmp_path / "c")
    assert first == again
    assert first != other
