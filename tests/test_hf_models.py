"""Hugging Face model directories of every architecture a researcher brings, as a new user
saves them (`save_pretrained`, transformers 5): each indexes, and its neurons, in the
index and live, are what transformers itself computes at the input of the MLP's
down-projection. The directories' paths trip TransformerLens' name rules ('llama',
'gemma' in a path): the architecture must come from config.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pytest

from fixtures_models import TINY_CTX

D_MLP = 128
SMALL = dict(
    ctx=TINY_CTX,
    batch_size=8,
    max_tokens=TINY_CTX * 8,
    top_k=3,
    band_size=2,
    window=(3, 1),
    calibration_tokens=200,
    hist_bins=32,
    quiet=True,
    device="cpu",
)


@dataclass
class Architecture:
    where: str  # the model directory, under the test's root
    slug: str  # its default name in URLs: the directory's name
    architecture: str
    down_proj: str  # the module whose input is the MLP's hidden activation, {L} the layer
    d_mlp: int = D_MLP


ARCHITECTURES = {
    "gpt2": Architecture("hf/gpt2", "gpt2", "GPT2LMHeadModel", "transformer.h.{L}.mlp.c_proj", 4 * 64),
    "gpt-neox": Architecture(
        "llama-runs/pythia", "pythia", "GPTNeoXForCausalLM", "gpt_neox.layers.{L}.mlp.dense_4h_to_h"
    ),
    "llama": Architecture("hf/llama", "llama", "LlamaForCausalLM", "model.layers.{L}.mlp.down_proj"),
    "mistral": Architecture("hf/mistral", "mistral", "MistralForCausalLM", "model.layers.{L}.mlp.down_proj"),
    "qwen2": Architecture("hf/qwen2", "qwen2", "Qwen2ForCausalLM", "model.layers.{L}.mlp.down_proj"),
    "gemma": Architecture("hf/gemma", "gemma", "GemmaForCausalLM", "model.layers.{L}.mlp.down_proj"),
    "gemma2": Architecture("gemma2-run/model", "model", "Gemma2ForCausalLM", "model.layers.{L}.mlp.down_proj"),
    "opt": Architecture("hf/opt", "opt", "OPTForCausalLM", "model.decoder.layers.{L}.fc2"),
    "gpt-j": Architecture("hf/gpt-j", "gpt-j", "GPTJForCausalLM", "transformer.h.{L}.mlp.fc_out", 4 * 64),
}


def hf_model(name: str, vocab_size: int):
    """A random 2-layer, d_model 64 model of architecture `name`, context 128."""
    import torch
    import transformers as t

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0)
    llama_like = dict(
        hidden_size=64,
        intermediate_size=D_MLP,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **common,
    )
    gpt = dict(n_positions=128, n_embd=64, n_layer=2, n_head=4, **common)  # no n_ctx, as transformers 5 saves it
    configs = {
        "gpt2": (t.GPT2Config(**gpt), t.GPT2LMHeadModel),
        "gpt-neox": (
            t.GPTNeoXConfig(
                hidden_size=64,
                intermediate_size=D_MLP,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=128,
                **common,
            ),
            t.GPTNeoXForCausalLM,
        ),
        "llama": (t.LlamaConfig(**llama_like), t.LlamaForCausalLM),
        "mistral": (t.MistralConfig(**llama_like), t.MistralForCausalLM),
        "qwen2": (t.Qwen2Config(**llama_like), t.Qwen2ForCausalLM),
        "gemma": (t.GemmaConfig(head_dim=16, **llama_like), t.GemmaForCausalLM),
        # A window shorter than the index's sequences: local and global layers both matter.
        "gemma2": (
            t.Gemma2Config(head_dim=16, query_pre_attn_scalar=16, sliding_window=8, **llama_like),
            t.Gemma2ForCausalLM,
        ),
        "opt": (
            t.OPTConfig(
                hidden_size=64,
                ffn_dim=D_MLP,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=128,
                word_embed_proj_dim=64,
                **common,
            ),
            t.OPTForCausalLM,
        ),
        "gpt-j": (t.GPTJConfig(rotary_dim=8, **gpt), t.GPTJForCausalLM),
    }
    config, cls = configs[name]
    torch.manual_seed(0)
    return cls(config).eval()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, tiny_model_dir):
    """Every architecture saved with save_pretrained, with a byte-level BPE tokenizer (the
    tiny model's, trained with `tokenizers`): name -> (directory, the transformers model)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tiny_model_dir / "tokenizer.json"), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    root = tmp_path_factory.mktemp("zoo")
    models = {}
    for name, arch in ARCHITECTURES.items():
        model = hf_model(name, len(tokenizer))
        model.save_pretrained(root / arch.where)
        tokenizer.save_pretrained(root / arch.where)
        models[name] = (root / arch.where, model)
    return models


def mlp_inputs(model, arch: Architecture, tokens) -> list[np.ndarray]:
    """transformers' own activations at the input of each layer's down-projection."""
    import torch

    captured: dict[int, torch.Tensor] = {}
    handles = [
        model.get_submodule(arch.down_proj.format(L=layer)).register_forward_pre_hook(
            lambda module, args, layer=layer: captured.__setitem__(layer, args[0].detach())
        )
        for layer in range(2)
    ]
    try:
        with torch.no_grad():
            tokens = torch.as_tensor(tokens)
            model(tokens, attention_mask=torch.ones_like(tokens))  # OPT would take its pad id (1) for padding
    finally:
        for handle in handles:
            handle.remove()
    # OPT flattens the batch before its MLP: [batch, pos, d_mlp] for every architecture.
    return [captured[layer].reshape(*tokens.shape, -1).numpy() for layer in range(2)]


def index(out: Path, model_dir: Path, corpus: Path, **options) -> duckdb.DuckDBPyConnection:
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    run_index(IndexConfig(model=str(model_dir), dataset=str(corpus), out=str(out), **{**SMALL, **options}))
    return duckdb.connect(str(out), read_only=True)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_model_directory_indexes_and_runs_live_as_transformers_computes(name, zoo, tmp_path, tiny_corpus_dir, capfd):
    from actscope.app.live import load_live

    arch = ARCHITECTURES[name]
    model_dir, model = zoo[name]
    con = index(tmp_path / "index.duckdb", model_dir, tiny_corpus_dir)
    assert "Moving model" not in capfd.readouterr().out  # stdout is the CLI's summary only
    row = dict(zip([d[0] for d in con.execute("SELECT * FROM models").description], con.fetchone()))
    assert row["model"] == arch.slug
    assert json.loads(row["loader"])["architecture"] == arch.architecture
    assert row["n_ctx"] == 128  # the config's context, not a value TransformerLens hard-codes
    tokens = np.array([r[0] for r in con.execute("SELECT token_ids FROM sequences ORDER BY seq").fetchall()])
    reference = mlp_inputs(model, arch, tokens)
    for layer in range(2):
        stored = con.execute(
            "SELECT max, min FROM unit_stats WHERE source = ? ORDER BY unit", [f"{layer}-mlp"]
        ).fetchall()
        acts = reference[layer][:, 1:].reshape(-1, arch.d_mlp)  # BOS is never indexed
        np.testing.assert_allclose(np.array(stored), np.stack([acts.max(0), acts.min(0)], 1), atol=1e-4)

    sources = con.execute("SELECT * FROM sources ORDER BY slug")
    source_rows = [dict(zip([d[0] for d in sources.description], r)) for r in sources.fetchall()]
    live = load_live(row, source_rows)
    for layer in range(2):
        got = live.activations(tokens[3].tolist(), f"{layer}-mlp")
        np.testing.assert_allclose(got, reference[layer][3], atol=1e-5)


def test_ctx_beyond_the_context_in_the_models_config_is_refused(zoo, tmp_path, tiny_corpus_dir):
    """Mistral's context is its config's 128, not TransformerLens' hard-coded 2048."""
    from actscope.indexer.errors import ActscopeError

    with pytest.raises(ActscopeError, match="--ctx 129 is larger than the model's context of 128"):
        index(tmp_path / "index.duckdb", zoo["mistral"][0], tiny_corpus_dir, ctx=129)
    assert not (tmp_path / "index.duckdb").exists()


def test_model_directory_without_a_tokenizer_says_so(zoo, tmp_path, tiny_corpus_dir):
    from actscope.indexer.errors import ActscopeError

    model_dir = tmp_path / "bare"
    zoo["gpt-neox"][1].save_pretrained(model_dir)  # weights and config only
    with pytest.raises(ActscopeError) as error:
        index(tmp_path / "index.duckdb", model_dir, tiny_corpus_dir)
    assert str(error.value).startswith(f"--model {model_dir}: the model directory has no tokenizer")


def test_name_names_the_model_in_urls_and_reserved_words_are_refused(zoo, tmp_path):
    from actscope.indexer.errors import ActscopeError
    from actscope.indexer.model.loading import resolve_model_spec

    model_dir = zoo["gpt2"][0]
    assert resolve_model_spec(str(model_dir), "tiny-gpt2").slug == "tiny-gpt2"
    for reserved in ("api", "static", "docs", "embed", "favicon.ico"):
        with pytest.raises(ActscopeError, match=f"--name '{reserved}': reserved for the site's own pages"):
            resolve_model_spec(str(model_dir), reserved)
    named_api = tmp_path / "api"
    named_api.mkdir()
    (named_api / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(ActscopeError, match="choose another with --name"):
        resolve_model_spec(str(named_api))
