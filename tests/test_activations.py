"""The runner's SAE encode: a few sequences at a time, into a reused buffer, and still
exactly what SAELens' own encode gives for the whole batch."""

from __future__ import annotations

import pytest
import torch


def _sae(path):
    from actscope.indexer.model.saes import load_sae, resolve_sae_spec

    return load_sae(resolve_sae_spec(str(path)))


@pytest.fixture(params=["standard", "topk"])
def sae_dir(request, tiny_sae_dir, tiny_topk_sae_dir):
    return tiny_sae_dir if request.param == "standard" else tiny_topk_sae_dir


def test_chunked_encode_equals_saelens_on_the_whole_batch(sae_dir, monkeypatch):
    from actscope.indexer.model import saes

    act = torch.randn(5, 16, 32) * 2
    expected = _sae(sae_dir).encode(act)  # SAELens' own modules, the batch in one go
    assert int((expected > 0).sum()) > 20  # some features fire: the comparison means something

    sae = _sae(sae_dir)
    saes.record_top_k(sae)
    # Two sequences per chunk: 5 sequences take chunks of 2, 2 and 1.
    monkeypatch.setattr(saes, "ENCODE_CHUNK_BYTES", 2 * 16 * sae.cfg.d_sae * 4)
    buffer = torch.full((5, 16, sae.cfg.d_sae), float("nan"))
    got = saes.encode(sae, act, buffer)
    assert got.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(saes.encode(sae, act), expected, rtol=0, atol=1e-6)

    if isinstance(sae.activation_fn, saes._RecordingTopK):
        values, indices = sae.activation_fn.last
        assert values.shape == indices.shape == (5, 16, sae.cfg.k)
        dense = torch.zeros_like(expected).scatter_(-1, indices, values)
        torch.testing.assert_close(dense, got, rtol=0, atol=0)


def test_runner_reuses_its_sae_buffer_and_keeps_values_exact(tiny_model_dir, tiny_topk_sae_dir):
    from actscope.indexer.kinds import SourceRequest, build_sources
    from actscope.indexer.model.loading import load_model, resolve_model_spec
    from actscope.indexer.model.runner import ActivationRunner
    from actscope.indexer.model.saes import resolve_sae_spec

    loaded = load_model(resolve_model_spec(str(tiny_model_dir)), "cpu")
    spec = resolve_sae_spec(str(tiny_topk_sae_dir))
    (source,) = build_sources(loaded.model, SourceRequest(no_neurons=True, saes=[(spec, _sae(tiny_topk_sae_dir))]))
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


def test_replay_in_the_runners_buffer_gives_the_calibration_activations(
    tiny_model_dir, tiny_topk_sae_dir, tiny_corpus_dir
):
    """Calibration keeps neuron activations in its own store and a TopK SAE's top-k; the
    replay gives back exactly what the runner gave, also when it rebuilds the SAE's dense
    activations in the runner's reused buffer."""
    from actscope.indexer.accumulate.calibrate import calibrate, replay
    from actscope.indexer.corpus.batches import iter_batches
    from actscope.indexer.corpus.documents import iter_documents
    from actscope.indexer.kinds import SourceRequest, build_sources
    from actscope.indexer.model.loading import load_model, resolve_model_spec
    from actscope.indexer.model.runner import ActivationRunner
    from actscope.indexer.model.saes import resolve_sae_spec

    loaded = load_model(resolve_model_spec(str(tiny_model_dir)), "cpu")
    spec = resolve_sae_spec(str(tiny_topk_sae_dir))
    sources = build_sources(loaded.model, SourceRequest(saes=[(spec, _sae(tiny_topk_sae_dir))]))
    batches = list(
        iter_batches(
            iter_documents(str(tiny_corpus_dir)),
            loaded.tokenizer,
            bos_token_id=loaded.bos_token_id,
            eos_token_id=loaded.eos_token_id,
            ctx=16,
            batch_size=4,
            max_sequences=12,
        )
    )
    assert len(batches) == 3
    fresh = ActivationRunner(loaded.model, sources)
    expected = [{slug: acts.clone() for slug, acts in fresh(batch.tokens).items()} for batch in batches]

    runner = ActivationRunner(loaded.model, sources, reuse_outputs=True)
    _, consumed = calibrate(runner, iter(batches), sources, 2 * 4 * 15, 32)  # two batches' tokens
    assert len(consumed) == 2
    sae_slug = sources[-1].slug
    replayed = 0
    with torch.inference_mode():  # as in the indexer: the runner's buffer is an inference tensor
        for index, (batch, acts, top_ks) in enumerate(replay(consumed, runner.output_buffer)):
            assert batch.index == index
            buffer = runner.output_buffer(sae_slug, acts[sae_slug].shape, "cpu")
            assert acts[sae_slug].data_ptr() == buffer.data_ptr()
            assert set(top_ks) == {sae_slug}
            for slug, values in expected[index].items():
                torch.testing.assert_close(acts[slug], values, rtol=0, atol=0)
            replayed += 1
    assert replayed == 2
