"""A unit's first view built the fast way gives the same bytes as the plain way: the
API's example sets serialised from the corpus encoded once (app/example_json.py), the
page's example spans built for all windows at once, and pages encoded piece by piece."""

from __future__ import annotations

import math

import orjson
import pytest

from actscope.app import pages
from actscope.app import urls as site_urls
from actscope.app.example_json import CorpusJSON
from actscope.indexer.store.reader import Example, Store

M = "tiny"


@pytest.fixture(scope="module")
def store(web_index):
    s = Store(web_index)
    yield s
    s.close()


class _SomeBytesShown(Store):
    """The test index's tokens are all UTF-8 alone: say every seventh is not, so that
    `token_bytes` holds hex strings too (the same lie to both ways of building)."""

    def token_hex(self, model, ids):
        return [None if i % 7 else f"{i:04x}" for i in ids]


@pytest.mark.parametrize("shown", [Store, _SomeBytesShown])
def test_api_example_sets_are_the_bytes_of_their_example_dicts(web_index, shown):
    store = shown(web_index)
    corpus = CorpusJSON.build(store, M)
    assert corpus is not None
    n_examples, n_hex = 0, 0
    for src in store.sources(M):
        for unit in range(src.n_units):
            rec = store.unit(M, src.slug, unit)
            sets = [rec.top] + [b.examples for b in rec.bands]
            encoded = corpus.example_sets(sets)
            assert encoded is not None and len(encoded) == len(sets)
            for fragment, examples in zip(encoded, sets):
                dicts = pages.example_dicts(store, M, examples)
                assert orjson.dumps(fragment) == orjson.dumps(dicts), (src.slug, unit)
                n_examples += len(examples)
                n_hex += sum(h is not None for d in dicts for h in d["token_bytes"])
    store.close()
    assert n_examples > 1000 and (n_hex > 1000) == (shown is _SomeBytesShown)


def test_the_api_answer_is_the_same_with_and_without_the_encoded_corpus(client):
    app = client.app
    for path in (f"/api/{M}/1-mlp/3", f"/api/{M}/1-res-sae/7?band=2&per_page=1&page=1"):
        fast = client.get(path).content
        saved = app.state.corpus_json
        app.state.corpus_json = {}
        try:
            app.state.response_cache.max_bytes, cache = 0, app.state.response_cache.max_bytes
            plain = client.get(path).content
        finally:
            app.state.corpus_json = saved
            app.state.response_cache.max_bytes = cache
        assert fast == plain and len(fast) > 1000


def test_example_sets_outside_the_corpus_fall_back_to_dicts(store, web_index):
    corpus = CorpusJSON.build(store, M)
    rec = store.unit(M, "0-mlp", 0)
    ex = rec.top[0]
    n_seq = store.model(M).n_sequences
    unknown = Example(n_seq + 5, ex.pos, ex.act, ex.start, ex.token_ids, ex.acts)
    too_long = Example(ex.seq, ex.pos, ex.act, ex.start, ex.token_ids, ex.acts * 200)
    assert corpus.example_sets([[ex], [unknown]]) is None
    assert corpus.example_sets([[too_long]]) is None
    assert orjson.dumps(corpus.example_sets([[], []])) == b"[[],[]]"
    # A window of no tokens, at the corpus's first position too: empty lists.
    empty = Example(0, 0, 1.5, 0, [], [])
    assert orjson.dumps(corpus.example_sets([[empty]])) == orjson.dumps([pages.example_dicts(store, M, [empty])])
    # Not held in memory, or larger than allowed: no encoded corpus.
    cold = Store(web_index, resident_mb=0)
    try:
        assert CorpusJSON.build(cold, M) is None
    finally:
        cold.close()
    assert CorpusJSON.build(store, M, max_tokens=10) is None
    # unit_data then gives the example dicts, as without as_json.
    args = (store, None, site_urls.ROOT, M, "0-mlp", 0)
    assert pages.unit_data(*args, as_json=lambda sets: None) == pages.unit_data(*args)


def test_spans_of_plain_windows_are_those_of_each():
    # Every window plain (ids in the vocabulary, none part of a character): the span
    # pieces are picked for all windows at once.
    from actscope.app.token_html import TokenTable, Window, tokens_html, windows_html

    table = TokenTable([b"<|bos|>", b"a%s", b" b\n", b"<i>", b"\t", b"&"])
    windows = [
        Window([0, 1, 2, 3], [7.0, -0.5, 0.25, 3.0], 2, True),
        Window([1, 3, 4, 1], [math.nan, -math.inf, math.inf, 1e-9], 0, False),
        Window([0, 5], [0.1, 2.0], 0, True),
        Window([5, 4, 3], [0.5, -1.0, 0.0], None, False),
        Window([3, 1], [-2.0, 1.0], 0, False),  # a negative focus
        Window([], [], None, False),
        Window([2, 2, 1], [2.5, 1999.0, -0.75], 1, False),  # a focus past the scale
    ]
    for scale in (2.0, 0.0, 1.0):
        want = [str(tokens_html(table, w.ids, w.acts, scale, w.focus, w.bos)) for w in windows]
        assert windows_html(table, windows, scale) == want


def test_a_page_with_a_non_ascii_character_encodes_as_a_whole(client):
    from actscope.app.render import page_bytes

    env = client.app.state.templates.env
    template = env.from_string("<p>{{ a }} \u2013 {{ b }}</p>{% for x in xs %}<i>{{ x }}</i>{% endfor %}")
    context = {"a": "caf\u00e9 <b>", "b": "\u65e5\u672c", "xs": ["x", "\U0001f600", "&"]}
    assert page_bytes(template, context) == template.render(context).encode("utf-8")
