"""The bundled toy model and SAE, loaded from the INSTALLED package (package data).

Thresholds come from the shipped training report (README figures); they leave a small
margin so a broken or re-initialised model fails, not a retrained one of equal quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import actscope.indexer as indexer_package
from actscope.indexer import bundled

REPO = Path(__file__).resolve().parents[1]
SAE_NAME = "toy-2l/res1-topk"
MAX_BUNDLE_BYTES = 40 * 1024 * 1024
# Measured on the shipped model: 4.38 on the test's 8 held-out rows of 128 tokens
# (stdlib 3.84, Shakespeare 4.91) and 4.86 in training_report.json (256 rows of 256).
# A re-initialised model scores about ln(8192) = 9.0.
HELDOUT_LOSS_MAX = 4.7
REPORT_LOSS_MAX = 5.0
SAE_EXPLAINED_VARIANCE_MIN = 0.95  # the target; measured 0.972 on the test's rows (0.970 in the report)


@pytest.fixture(scope="module")
def loaded():
    from actscope.indexer.model.loading import load_model, resolve_model_spec

    return load_model(resolve_model_spec("toy-2l"), device="cpu")


@pytest.fixture(scope="module")
def sae():
    from sae_lens import SAE

    return SAE.load_from_disk(str(bundled.sae_dir(SAE_NAME)), device="cpu")


@pytest.fixture(scope="module")
def heldout_rows(loaded):
    """8 rows of BOS + 127 held-out tokens: 4 of code, 4 of Shakespeare."""
    import torch

    from actscope.indexer.corpus import builtin as builtin_corpora
    from actscope.indexer.corpus.batches import iter_batches

    rows = []
    for name in ("stdlib:heldout", "shakespeare:heldout"):
        batch = next(
            iter_batches(
                builtin_corpora.iter_documents(name),
                loaded.tokenizer,
                bos_token_id=loaded.bos_token_id,
                eos_token_id=loaded.eos_token_id,
                ctx=128,
                batch_size=4,
                max_sequences=4,
            )
        )
        rows.append(batch.tokens)
    return torch.cat(rows)


def test_bundle_comes_from_the_installed_package():
    package = Path(indexer_package.__file__).resolve().parent
    assert package != (REPO / "indexer").resolve(), "tests must run against the installed package"
    assert "site-packages" in package.parts
    root = bundled.model_dir("toy-2l")
    assert root is not None and root.resolve().is_relative_to(package)
    assert bundled.bundled_sae_names() == [SAE_NAME]


def test_bundle_size_and_report():
    root = Path(bundled.model_dir("toy-2l")).parent
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_BUNDLE_BYTES
    report = json.loads((root / "training_report.json").read_text())
    for name, size in report["files_bytes"].items():
        assert (root / name).stat().st_size == size, name  # the report describes these files
    assert report["evaluation"]["heldout_loss_per_token"]["mix"] < REPORT_LOSS_MAX


def test_model_shape_and_tokenizer(loaded):
    cfg = loaded.model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.d_mlp, cfg.d_vocab) == (2, 256, 1024, 8192)
    assert cfg.n_ctx >= 256 and cfg.act_fn == "gelu" and cfg.normalization_type == "LN"
    assert loaded.bos_token_id == loaded.eos_token_id == 0
    text = "def f(x):\n    return x  # ok\n\nHam.\nTo be, or not to be"
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert loaded.tokenizer.decode(ids) == text  # byte-level: lossless
    assert len(ids) < len(text) / 2  # a trained BPE, not bytes (3.55 chars/token on the corpus)


def test_heldout_logits_and_loss(loaded, heldout_rows):
    import torch

    logits = loaded.model(heldout_rows)  # [8, 128, 8192]
    assert logits.shape == (8, 128, 8192)
    assert torch.isfinite(logits).all()
    loss = float(loaded.model(heldout_rows, return_type="loss"))
    assert 1.0 < loss < HELDOUT_LOSS_MAX
    code_loss = float(loaded.model(heldout_rows[:4], return_type="loss"))
    assert code_loss < loss  # Python is more predictable than Shakespeare for this model


def test_greedy_completion_is_python(loaded):
    import torch

    tok = loaded.tokenizer
    ids = [loaded.bos_token_id] + tok("import os\nimport", add_special_tokens=False)["input_ids"]
    for _ in range(3):
        logits = loaded.model(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    assert tok.decode(ids[1:]) == "import os\nimport sys\nimport"  # the shipped model's greedy choice


def test_sae_matches_the_model(loaded, sae):
    from sae_lens import TopKSAE

    assert isinstance(sae, TopKSAE)
    hook = sae.cfg.metadata.hook_name
    assert hook == "blocks.1.hook_resid_pre"
    assert hook in loaded.model.hook_dict
    assert sae.cfg.d_in == loaded.model.cfg.d_model
    assert sae.cfg.d_sae == 1024


def test_sae_reconstructs_heldout_activations(loaded, sae, heldout_rows):
    import torch

    hook = sae.cfg.metadata.hook_name
    _, cache = loaded.model.run_with_cache(heldout_rows, names_filter=hook, return_type=None)
    x = cache[hook][heldout_rows != loaded.eos_token_id]  # [n, 256], BOS/EOS left out
    latents = sae.encode(x)
    assert torch.isfinite(latents).all()
    l0 = float((latents > 0).sum(dim=-1).float().mean())
    assert l0 == sae.cfg.k == 32  # TopK: exactly k latents per token
    recon = sae.decode(latents)
    explained = 1 - float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert explained > SAE_EXPLAINED_VARIANCE_MIN
