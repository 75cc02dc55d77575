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
