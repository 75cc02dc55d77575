"""`actscope train-default`: the same seed gives the same files (on a tiny configuration)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from actscope.indexer.bundled.train_model import TrainSettings, default_out_dir, train_default
from actscope.indexer.errors import ActscopeError

WEIGHT_FILES = [
    "model/tokenizer.json",
    "model/model.safetensors",
    "model/actscope_model.json",
    "saes/res1-topk/sae_weights.safetensors",
    "saes/res1-topk/cfg.json",
]


def digests(root: Path) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in WEIGHT_FILES}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    runs = []
    for seed in (0, 0, 1):
        out = tmp_path_factory.mktemp(f"train-seed{seed}")
        report = train_default(out, seed=seed, settings=TrainSettings.quick(), log=lambda _msg: None)
        runs.append((out, report))
    return runs


@pytest.mark.slow
def test_same_seed_same_files(quick_runs):
    (first, _), (second, _), (other, _) = quick_runs
    assert digests(first) == digests(second)
    differs = {k for k, v in digests(first).items() if digests(other)[k] != v}
    assert "model/model.safetensors" in differs and "saes/res1-topk/sae_weights.safetensors" in differs


@pytest.mark.slow
def test_sae_only_retraining_reproduces_the_sae(quick_runs, tmp_path):
    import shutil

    first, _ = quick_runs[0]
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    (copy / "saes" / "res1-topk" / "sae_weights.safetensors").unlink()
    train_default(copy, seed=0, settings=TrainSettings.quick(), log=lambda _msg: None, sae_only=True)
    assert digests(copy) == digests(first)


@pytest.mark.slow
def test_trained_files_load_like_the_bundle(quick_runs):
    from sae_lens import SAE

    from actscope.indexer.model.loading import load_model, resolve_model_spec

    out, report = quick_runs[0]
    loaded = load_model(resolve_model_spec(str(out / "model")), device="cpu")
    assert loaded.model.cfg.d_vocab == report["tokenizer"]["vocab_size"] == 600
    sae = SAE.load_from_disk(str(out / "saes" / "res1-topk"))
    assert sae.cfg.metadata.hook_name in loaded.model.hook_dict
    saved = json.loads((out / "training_report.json").read_text())
    figures = saved["evaluation"]["saes"]["res1-topk"]
    assert figures["l0"] <= 4 and 0 <= figures["dead_share"] <= 1
    assert figures["hook_name"] == "blocks.1.hook_resid_pre"
    assert set(saved["evaluation"]["heldout_loss_per_token"]) == {"mix", "stdlib", "shakespeare"}
    assert len(saved["evaluation"]["samples"]) >= 3
    assert saved["model"]["train_tokens"] == 6 * 4 * 64


def test_installed_package_needs_an_explicit_out():
    # Tests run against the installed package, which has no source tree to write into.
    with pytest.raises(ActscopeError, match="give --out DIR"):
        default_out_dir()


@pytest.mark.slow
def test_dictionary_starts_on_centred_activations(quick_runs):
    import torch
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    from actscope.indexer.bundled.train_sae import init_from_data
    from actscope.indexer.model.loading import load_model, resolve_model_spec

    out, _ = quick_runs[0]
    loaded = load_model(resolve_model_spec(str(out / "model")), device="cpu")
    hook = "blocks.1.hook_resid_pre"
    torch.manual_seed(0)
    rows = torch.randint(1, 600, (6, 32))
    rows[:, 0] = loaded.bos_token_id
    rows[2, 7] = loaded.eos_token_id
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4))
    with torch.no_grad():
        init_from_data(sae, loaded.model, rows, hook, loaded.eos_token_id, seed=0)
        _, cache = loaded.model.run_with_cache(rows, names_filter=hook, return_type=None)
    x = cache[hook][rows != loaded.eos_token_id]  # 6 x 31 - 1 = 185 activations, BOS/EOS left out
    assert x.shape[0] == 185
    centred = x - x.mean(dim=0)
    assert torch.allclose(sae.b_dec, x.mean(dim=0), atol=1e-5)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.full((64,), 0.1), atol=1e-6)  # SAELens' initial norm
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    cos = torch.nn.functional.normalize(sae.W_dec, dim=-1) @ torch.nn.functional.normalize(centred, dim=-1).T
    best = cos.max(dim=1)
    assert (best.values > 1 - 1e-5).all()  # every latent starts on one centred activation
    assert len(set(best.indices.tolist())) == 64  # each on a different one


def test_cli_retrains_the_sae_alone(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from actscope.cli import main
    from actscope.indexer.bundled import train_model

    calls = []
    monkeypatch.setattr(train_model, "train_default", lambda **kwargs: calls.append(kwargs))
    result = CliRunner().invoke(main, ["train-default", "--out", str(tmp_path), "--sae-only", "--seed", "3"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["train-default", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert calls == [
        {"out_dir": str(tmp_path), "seed": 3, "sae_only": True},
        {"out_dir": str(tmp_path), "seed": 0, "sae_only": False},
    ]
