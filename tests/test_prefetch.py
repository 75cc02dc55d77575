"""The background producer of batches: order, errors and early stops."""

import threading

import pytest

from actscope.indexer.corpus.prefetch import prefetch
from actscope.indexer.errors import ActscopeError


def test_items_in_order():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))


def test_producer_error_reaches_the_consumer():
    def items():
        yield 1
        raise ActscopeError("--dataset x: broken")

    stream = prefetch(items())
    assert next(stream) == 1
    with pytest.raises(ActscopeError, match="broken"):
        next(stream)


def test_early_stop_joins_the_producer():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    stream = prefetch(items(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert not any(t.name == "actscope-prefetch" for t in threading.enumerate())
    assert len(produced) < 10  # it stopped instead of running through the iterator


def test_cpu_run_reads_documents_in_the_background_and_tokenises_on_the_main_thread(
    tmp_path, tiny_model_dir, tiny_corpus_dir, monkeypatch
):
    """On the CPU, torch's workers use every core during the forward passes; a tokenizer
    thread beside them slows them down, so only reading documents is left to the
    background thread."""
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.corpus import batches as batch_module
    from actscope.indexer.corpus import documents as document_module
    from actscope.indexer.run import run_index

    read_in, tokenised_in = set(), set()
    real_documents, real_token_stream = document_module.iter_documents, batch_module.iter_token_stream

    def documents(*args, **kwargs):
        for doc in real_documents(*args, **kwargs):
            read_in.add(threading.current_thread().name)
            yield doc

    def token_stream(*args, **kwargs):
        for ids in real_token_stream(*args, **kwargs):
            tokenised_in.add(threading.current_thread().name)
            yield ids

    monkeypatch.setattr(document_module, "iter_documents", documents)
    monkeypatch.setattr(batch_module, "iter_token_stream", token_stream)
    out = tmp_path / "tiny.duckdb"
    run_index(
        IndexConfig(
            model=str(tiny_model_dir),
            dataset=str(tiny_corpus_dir),
            out=str(out),
            max_tokens=2048,
            ctx=64,
            batch_size=4,
            device="cpu",
            quiet=True,
        )
    )
    assert read_in == {"actscope-prefetch"}
    assert tokenised_in == {threading.main_thread().name}
    assert not any(t.name == "actscope-prefetch" for t in threading.enumerate())
