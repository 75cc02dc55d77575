"""The runner's SAE encode: a few sequences at a time, into a reused buffer, and still
exactly what SAELens' own encode gives for the whole batch."""

from __future__ import annotations

import pytest
import torch


def _sae(path):
    from indexer.sources import load_sae, resolve_sae_spec

    return load_sae(resolve_sae_spec(str(path)))


@pytest.fixture(params=["standard", "topk"])
def sae_dir(request, tiny_sae_dir, tiny_topk_sae_dir):
    return tiny_sae_dir if request.param == "standard" else tiny_topk_sae_dir


def test_chunked_encode_equals_saelens_on_the_whole_batch(sae_dir, monkeypatch):
    from indexer import activations

    act = torch.randn(5, 16, 32) * 2
    expected = _sae(sae_dir).encode(act)  # SAELens' own modules, the batch in one go
    assert int((expected > 0).sum()) > 20  # some features fire: the comparison means something

    sae = _sae(sae_dir)
    activations._record_top_k(sae)
    # Two sequences per chunk: 5 sequences take chunks of 2, 2 and 1.
    monkeypatch.setattr(activations, "ENCODE_CHUNK_BYTES", 2 * 16 * sae.cfg.d_sae * 4)
    buffer = torch.full((5, 16, sae.cfg.d_sae), float("nan"))
    got = activations.encode(sae, act, buffer)
    assert got.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(activations.encode(sae, act), expected, rtol=0, atol=1e-6)

    if isinstance(sae.activation_fn, activations._RecordingTopK):
        values, indices = sae.activation_fn.last
        assert values.shape == indices.shape == (5, 16, sae.cfg.k)
        dense = torch.zeros_like(expected).scatter_(-1, indices, values)
        torch.testing.assert_close(dense, got, rtol=0, atol=0)


def test_runner_reuses_its_sae_buffer_and_keeps_values_exact(tiny_model_dir, tiny_topk_sae_dir):
    from indexer.activations import ActivationRunner
    from indexer.model import load_model, resolve_model_spec
    from indexer.sources import resolve_sae_spec, sae_sources

    loaded = load_model(resolve_model_spec(str(tiny_model_dir)), "cpu")
    spec = resolve_sae_spec(str(tiny_topk_sae_dir))
    (source,) = sae_sources(loaded.model, [_sae(tiny_topk_sae_dir)], [spec], set())
    reusing = ActivationRunner(loaded.model, [source], reuse_outputs=True)
    fresh = ActivationRunner(loaded.model, [source])
    first_tokens = torch.randint(1, loaded.model.cfg.d_vocab, (3, 12))
    second_tokens = torch.randint(1, loaded.model.cfg.d_vocab, (3, 12))

    first = reusing(first_tokens)[source.slug]
    first_values = first.clone()
    second = reusing(second_tokens)[source.slug]
    assert second.data_ptr() == first.data_ptr()  # one buffer, overwritten
    torch.testing.assert_close(second, fresh(second_tokens)[source.slug], rtol=0, atol=0)
    torch.testing.assert_close(first_values, fresh(first_tokens)[source.slug], rtol=0, atol=0)
    assert not torch.equal(first_values, second)
