"""Units like this one: neighbours by fingerprint correlation, against numpy on the stored
fingerprints; an SAE with two identical features; the same model indexed under two names
(every unit's top cross-model neighbour is itself, r = 1); the pages and the compare view."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pytest
from bs4 import BeautifulSoup

from fixtures_models import TINY_INDEX_OPTIONS

SOURCES = ("0-mlp", "1-mlp", "1-res-sae")


def _stored(path, model: str) -> dict[str, np.ndarray]:
    """{source: float64 [units, n]} straight from the fingerprints table."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        n = con.execute("SELECT count(*) FROM reservoir WHERE model = ?", [model]).fetchone()[0]
        out: dict[str, list] = {}
        for source, slots, acts in con.execute(
            "SELECT source, slots, acts FROM fingerprints WHERE model = ? ORDER BY source, unit", [model]
        ).fetchall():
            row = np.zeros(n)
            values = np.frombuffer(acts, dtype="<f2").astype(np.float64)
            row[slice(None) if slots is None else np.frombuffer(slots, dtype="<u2")] = values
            out.setdefault(source, []).append(row)
        return {source: np.array(rows) for source, rows in out.items()}
    finally:
        con.close()


def _eligible(rows: np.ndarray) -> np.ndarray:
    return ((rows > 0).sum(1) >= 8) & (rows.max(1) > rows.min(1))


def _served(*pairs):
    from actscope.app.similar_data import Served
    from actscope.indexer.store.reader import Store

    return [Served(model, Store(path)) for model, path in pairs]


def _similar(served, model, source, index, scope="all", k=20):
    from actscope.app.similar_data import similar_data
    from actscope.app.urls import ROOT

    return similar_data(served, ROOT, model, source, index, scope, k)


def test_neighbours_are_numpys_correlations_of_the_stored_fingerprints(tiny_index):
    stored = _stored(tiny_index, "tiny")
    served = _served(("tiny", tiny_index))
    everything = [(s, u) for s in SOURCES for u in range(stored[s].shape[0]) if _eligible(stored[s])[u]]
    assert len(everything) > 100
    rows = np.array([stored[s][u] for s, u in everything])
    r = np.corrcoef(rows)
    checked = 0
    for i, (source, unit) in enumerate(everything[::9]):
        i = everything.index((source, unit))
        order = sorted((j for j in range(len(everything)) if j != i), key=lambda j: (-r[i, j], j))[:20]
        got = _similar(served, "tiny", source, unit, scope="model")
        assert [(n["source"], n["index"]) for n in got["similar"]] == [everything[j] for j in order]
        np.testing.assert_allclose([n["r"] for n in got["similar"]], r[i, order], atol=2e-5)
        assert got["note"] is None and got["reservoir"]["n"] == TINY_INDEX_OPTIONS["reservoir"]
        here = _similar(served, "tiny", source, unit, scope="source", k=5)
        assert all(n["source"] == source for n in here["similar"]) and len(here["similar"]) == 5
        checked += 1
    assert checked > 10
    # A unit active on fewer than 8 positions has none, and says so.
    sparse = next(u for u in range(stored["1-res-sae"].shape[0]) if not _eligible(stored["1-res-sae"])[u])
    got = _similar(served, "tiny", "1-res-sae", sparse)
    assert got["similar"] == [] and "too sparse on the reservoir" in got["note"].lower()


def test_the_api_and_the_compare_views_correlations(client, tiny_index):
    stored = _stored(tiny_index, "tiny")
    data = client.get("/api/tiny/1-mlp/3/similar", params={"scope": "model", "k": 3}).json()
    assert len(data["similar"]) == 3 and data["reservoir"]["url"] == "/api/tiny/reservoir"
    first = data["similar"][0]
    expected = np.corrcoef(stored["1-mlp"][3], stored[first["source"]][first["index"]])[0, 1]
    assert first["r"] == pytest.approx(expected, abs=2e-5)
    assert first["compare"] == f"/tiny/compare?units=1-mlp/3,{first['source']}/{first['index']}"
    compared = client.get("/api/tiny/compare", params={"units": f"1-mlp/3,{first['source']}/{first['index']},0-mlp/5"})
    pairs = {(c["a"], c["b"]): c for c in compared.json()["correlations"]}
    assert pairs[(0, 1)]["r"] == pytest.approx(first["r"], abs=1e-6)
    assert pairs[(0, 2)]["r"] == pytest.approx(np.corrcoef(stored["1-mlp"][3], stored["0-mlp"][5])[0, 1], abs=2e-5)
    positions = client.get("/api/tiny/reservoir").json()
    assert positions["n"] == len(positions["positions"]) == TINY_INDEX_OPTIONS["reservoir"]
    con = duckdb.connect(str(tiny_index), read_only=True)
    try:
        seq, pos = positions["positions"][7]["seq"], positions["positions"][7]["pos"]
        token = con.execute("SELECT token_ids[? + 1] FROM sequences WHERE seq = ?", [pos, seq]).fetchone()[0]
    finally:
        con.close()
    assert positions["positions"][7]["token_id"] == token
    assert client.get("/api/tiny/1-mlp/3/similar", params={"scope": "layer"}).status_code == 422
    assert client.get("/api/tiny/1-mlp/3/similar", params={"k": 0}).status_code == 422
    assert client.get("/api/tiny/1-mlp/99999/similar").status_code == 404


def test_the_unit_page_links_its_neighbours_which_work_without_javascript(client):
    soup = BeautifulSoup(client.get("/tiny/1-mlp/3").text, "html.parser")
    link = soup.select_one("#neighbours #neighbours-link")
    assert link["href"] == "/tiny/1-mlp/3/similar" and link["hx-get"] == link["href"]
    page = client.get("/tiny/1-mlp/3/similar?scope=source&k=4")
    assert page.status_code == 200
    soup = BeautifulSoup(page.text, "html.parser")
    api = client.get("/api/tiny/1-mlp/3/similar?scope=source&k=4").json()
    assert [a["href"] for a in soup.select(".similar-table a.neighbour")] == [n["url"] for n in api["similar"]]
    assert [a["href"] for a in soup.select(".similar-table a.compare-link")] == [n["compare"] for n in api["similar"]]
    fragment = client.get("/tiny/1-mlp/3/similar", headers={"HX-Request": "true", "HX-Target": "neighbours"})
    assert fragment.text.lstrip().startswith('<section id="neighbours"')
    bad = client.get("/tiny/1-mlp/3/similar?k=many")
    assert bad.status_code == 422
    assert "k must be a whole number" in BeautifulSoup(bad.text, "html.parser").select_one("#similar-error").text
    assert BeautifulSoup(bad.text, "html.parser").select_one("#k")["value"] == "many"


@pytest.fixture(scope="module")
def duplicated_index(tmp_path_factory, tiny_model_dir, tiny_sae_dir, tiny_corpus_dir, tiny_index):
    """The tiny SAE with its most active feature copied into the next one (an SAE with two
    identical features), indexed alone as 'tiny-dup', with another seed."""
    import torch
    from sae_lens import SAE

    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    rows = _stored(tiny_index, "tiny")["1-res-sae"]
    feature = int(np.argmax((rows > 0).sum(1)[:-1]))
    sae_dir = tmp_path_factory.mktemp("saes") / "duplicated"
    shutil.copytree(tiny_sae_dir, sae_dir)
    sae = SAE.load_from_disk(str(sae_dir))
    with torch.no_grad():
        sae.W_enc[:, feature + 1] = sae.W_enc[:, feature]
        sae.b_enc[feature + 1] = sae.b_enc[feature]
        sae.W_dec[feature + 1] = sae.W_dec[feature]
    sae.save_model(str(sae_dir))
    out = tmp_path_factory.mktemp("index") / "tiny-dup.duckdb"
    options = {**TINY_INDEX_OPTIONS, "seed": 1}
    run_index(
        IndexConfig(
            model=str(tiny_model_dir),
            dataset=str(tiny_corpus_dir),
            out=str(out),
            name="tiny-dup",
            saes=[str(sae_dir)],
            no_neurons=True,
            **options,
        )
    )
    return out, feature


def test_two_identical_sae_features_are_each_others_top_neighbour(duplicated_index, tiny_index):
    path, feature = duplicated_index
    served = _served(("tiny-dup", path), ("tiny", tiny_index))
    for a, b in ((feature, feature + 1), (feature + 1, feature)):
        got = _similar(served, "tiny-dup", "1-res-sae", a, scope="source", k=3)
        top = got["similar"][0]
        assert (top["source"], top["index"]) == ("1-res-sae", b) and top["r"] == pytest.approx(1.0, abs=1e-5)
        assert got["similar"][1]["r"] < 0.999
        decoder = got["decoder_cosine"][0]
        assert (decoder["index"], decoder["cos"]) == (b, pytest.approx(1.0, abs=1e-5))
    # Another --seed draws another reservoir: the tiny model's units are not compared, and the page says why.
    got = _similar(served, "tiny-dup", "1-res-sae", feature, scope="all")
    assert {n["model"] for n in got["similar"]} == {"tiny-dup"}
    assert got["models"] == [
        {"model": "tiny", "reason": "reservoirs drawn with other seeds: tiny's with --seed 0, tiny-dup's with --seed 1"}
    ]


def test_decoder_neighbours_are_numpys_cosines_of_the_stored_directions(tiny_index):
    con = duckdb.connect(str(tiny_index), read_only=True)
    try:
        rows = con.execute(
            "SELECT direction FROM decoders WHERE model = 'tiny' AND source = '1-res-sae' ORDER BY unit"
        ).fetchall()
    finally:
        con.close()
    directions = np.array([r[0] for r in rows], dtype=np.float64)
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    cos = unit @ unit.T
    served = _served(("tiny", tiny_index))
    for feature in range(0, len(rows), max(1, len(rows) // 12)):
        got = _similar(served, "tiny", "1-res-sae", feature, scope="source", k=5)["decoder_cosine"]
        order = sorted((j for j in range(len(rows)) if j != feature), key=lambda j: (-cos[feature, j], j))[:5]
        assert [n["index"] for n in got] == order
        np.testing.assert_allclose([n["cos"] for n in got], cos[feature, order], atol=1e-5)


@pytest.fixture(scope="module")
def renamed_index(tmp_path_factory, tiny_model_dir, tiny_sae_dir, tiny_corpus_dir):
    """The tiny index's model, SAE, corpus and options under another name, 'tiny-b'."""
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    out = tmp_path_factory.mktemp("index") / "tiny-b.duckdb"
    run_index(
        IndexConfig(
            model=str(tiny_model_dir),
            dataset=str(tiny_corpus_dir),
            out=str(out),
            name="tiny-b",
            saes=[str(tiny_sae_dir)],
            **TINY_INDEX_OPTIONS,
        )
    )
    return out


def test_every_units_top_cross_model_neighbour_is_its_twin(tiny_index, renamed_index):
    stored = _stored(tiny_index, "tiny")
    served = _served(("tiny", tiny_index), ("tiny-b", renamed_index))
    checked = 0
    for source in SOURCES:
        for unit in np.flatnonzero(_eligible(stored[source])):
            got = _similar(served, "tiny", source, int(unit), scope="all", k=2)
            top = got["similar"][0]
            assert (top["model"], top["source"], top["index"]) == ("tiny-b", source, unit)
            assert top["r"] == pytest.approx(1.0, abs=1e-5)
            checked += 1
    assert checked > 150
    assert _similar(served, "tiny", "1-mlp", 3, scope="model")["models"] == [{"model": "tiny-b", "reason": None}]
    assert {n["model"] for n in _similar(served, "tiny", "1-mlp", 3, scope="model")["similar"]} == {"tiny"}


def test_the_server_of_both_files_lists_the_twin_in_the_other_model(tiny_index, renamed_index, duplicated_index):
    """`actscope serve` of several files: neighbours cross into the model whose reservoir
    lines up, and the page says why the other is not compared; the compare view across
    the two models gives the twins' r = 1."""
    from fixtures_web import make_client

    with make_client([tiny_index, renamed_index, duplicated_index[0]], live=False) as client:
        data = client.get("/api/tiny/0-mlp/7/similar", params={"k": 3}).json()
        top = data["similar"][0]
        assert (top["model"], top["source"], top["index"]) == ("tiny-b", "0-mlp", 7)
        assert top["r"] == pytest.approx(1.0, abs=1e-5)
        assert top["compare"] == "/tiny/compare?units=0-mlp/7,tiny-b:0-mlp/7"
        reasons = {m["model"]: m["reason"] for m in data["models"]}
        assert reasons["tiny-b"] is None and "tiny-dup's with --seed 1, tiny's with --seed 0" in reasons["tiny-dup"]
        compared = client.get(top["compare"].replace("/tiny/", "/api/tiny/", 1)).json()
        assert compared["correlations"][0]["r"] == pytest.approx(1.0, abs=1e-5)
        page = BeautifulSoup(client.get("/tiny/0-mlp/7/similar").text, "html.parser")
        assert page.select_one(".similar-table a.neighbour").get_text() == "tiny-b:0-mlp/7"
        assert "Units of tiny-dup are not compared: reservoirs drawn with other seeds" in page.get_text(" ")


def test_controls_and_the_same_neuron_at_other_hooks_are_never_neighbours(solu_served_index):
    """A SoLU neuron indexed at hook_pre, hook_mid and hook_post: its neighbours over the
    model leave out the same neuron at the other hooks (nearly r = 1 with it) and the
    random directions (a control); in its own source only, every unit but itself counts."""
    from actscope.indexer.store.reader import Store

    store = Store(solu_served_index)
    served = _served(("solu-tiny", solu_served_index), ("tiny", solu_served_index))
    hooks = {"1-mlp-pre", "1-mlp-mid", "1-mlp"}
    prints = store.fingerprints("solu-tiny", "1-mlp")
    units = [int(u) for u in np.flatnonzero(prints.eligible)][:12]
    assert units
    mid = store.fingerprints("solu-tiny", "1-mlp-mid")
    would_be_listed = 0
    for unit in units:
        got = _similar(served, "solu-tiny", "1-mlp", unit, scope="all", k=100)
        listed = {(n["model"], n["source"], n["index"]) for n in got["similar"]}
        assert not {("solu-tiny", h, unit) for h in hooks} & listed
        assert not any(n["source"] == "1-res-pre-rand" for n in got["similar"])
        assert len(got["similar"]) == 100
        # Left out, not missed: the same neuron at hook_mid correlates more than the 100th listed.
        if mid.eligible[unit]:
            would_be_listed += float(mid.correlate(prints.standardised(unit))[unit]) > got["similar"][-1]["r"]
    assert would_be_listed > 0
    # Both models of the file share the corpus, the tokenizer and the reservoir: compared.
    assert got["models"] == [{"model": "tiny", "reason": None}]
    assert "tiny" in {n["model"] for n in _similar(served, "solu-tiny", "1-mlp", units[0], k=100)["similar"]}


def test_a_bad_k_is_said_in_our_words_and_keeps_the_visitors_scope(client):
    api = client.get("/api/tiny/1-mlp/3/similar", params={"scope": "source", "k": "abc"})
    assert api.status_code == 422
    message = api.json()["error"]["message"]
    assert message == "k must be a whole number, not 'abc'."
    page = client.get("/tiny/1-mlp/3/similar", params={"scope": "source", "k": "abc"})
    assert page.status_code == 422
    soup = BeautifulSoup(page.text, "html.parser")
    assert soup.select_one("#similar-error").get_text() == message
    assert soup.select_one("#k")["aria-invalid"] == "true" and soup.select_one("#k")["value"] == "abc"
    assert soup.select_one("#scope").get("aria-invalid") is None
    assert soup.select_one("#scope option[selected]")["value"] == "source"
    # The list below is the visitor's scope (with the default k), not every model's.
    want = client.get("/api/tiny/1-mlp/3/similar", params={"scope": "source"}).json()["similar"]
    assert [a["href"] for a in soup.select(".similar-table a.neighbour")] == [n["url"] for n in want]
    assert soup.select_one(".scope-links strong").get_text() == "this source"
    # A bad scope: marked on its box, the list of the default scope below.
    page = client.get("/tiny/1-mlp/3/similar", params={"scope": "layer", "k": "5"})
    soup = BeautifulSoup(page.text, "html.parser")
    assert page.status_code == 422 and "scope is one of source, model, all" in soup.select_one("#similar-error").text
    assert soup.select_one("#scope")["aria-invalid"] == "true" and soup.select_one("#k").get("aria-invalid") is None


class _FakeStore:
    """What line_up reads of an index: its reservoir, vocabulary and model facts."""

    def __init__(self, reservoir, vocab, ctx=32, n_tokens=4096):
        from types import SimpleNamespace

        self._reservoir, self._vocab = reservoir, vocab
        self._info = SimpleNamespace(ctx=ctx, n_tokens=n_tokens)

    def reservoir(self, model):
        return self._reservoir

    def vocab_bytes(self, model):
        return self._vocab

    def model(self, model):
        return self._info


def _reservoir(n=4, seed=0, shift=0, tokens=(5, 6, 7, 8)):
    from actscope.indexer.store.fingerprints import Reservoir

    seq = np.arange(n)
    return Reservoir(n, 8, seed, seq, (seq + 1 + shift) % 30, np.array(tokens[:n]))


VOCAB = [b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i"]


@pytest.mark.parametrize(
    "other,reason",
    [
        (_FakeStore(_reservoir(), VOCAB), None),
        (_FakeStore(None, VOCAB), "the index of there has no fingerprints (it was built with --reservoir 0)"),
        (_FakeStore(_reservoir(), VOCAB + [b"j"]), "another tokenizer: there's has 10 tokens, here's 9"),
        (
            _FakeStore(_reservoir(), VOCAB[:3] + [b"X", b"Y"] + VOCAB[5:]),
            "another tokenizer: both have 9 tokens, but 2 of them differ (token 3 is b'X' in there, b'd' in here)",
        ),
        (
            _FakeStore(_reservoir(), VOCAB, ctx=64),
            "sequences of another length: there's are 64 tokens long (--ctx), here's 32",
        ),
        (
            _FakeStore(_reservoir(n=3), VOCAB),
            "reservoirs of other sizes: there's has 3 positions, here's 4 (--reservoir)",
        ),
        (
            _FakeStore(_reservoir(seed=7), VOCAB),
            "reservoirs drawn with other seeds: there's with --seed 7, here's with --seed 0",
        ),
        (
            _FakeStore(_reservoir(shift=1), VOCAB, n_tokens=8192),
            "reservoirs at other positions: 4 of their 4 positions differ; there indexed 8,192 tokens, here 4,096 "
            "(--max-tokens or the corpus)",
        ),
        (
            _FakeStore(_reservoir(tokens=(5, 6, 1, 2)), VOCAB),
            "other tokens at 2 of the reservoir's 4 positions: the two indexes read another corpus",
        ),
    ],
)
def test_each_reason_models_are_not_compared_says_what_differs(other, reason):
    from actscope.app.similar_data import Served, line_up

    home = Served("here", _FakeStore(_reservoir(), VOCAB))
    assert line_up(home, Served("there", other)) == reason
