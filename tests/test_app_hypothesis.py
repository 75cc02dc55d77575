"""Regex hypotheses against a unit (issue 18): the matching rule on hand-built tokens, and
the figures of the API against a direct computation (TransformerLens activations on the
stored tokens, prefixes decoded one by one, stdlib `re`, pairwise ROC AUC)."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from bs4 import BeautifulSoup

from actscope.app import hypothesis_run, schemas
from actscope.app.regex_match import Decoded, PatternError, compile_pattern, decode_sequences, matched_tokens
from fixtures_web import make_client

M = "tiny"
BOS, EOS = 0, 1
LATER = float("inf")  # no time limit


# -- the matching rule, on hand-built tokens -------------------------------------------------
# Token id -> bytes: 2 "caf", 3 the first byte of "é", 4 its second byte, 5 "!", 6 " x",
# 7 "(", 8 "f".
TOKEN_BYTES = [b"<s>", b"<|endoftext|>", b"caf", b"\xc3", b"\xa9", b"!", b" x", b"(", b"f"]


def _decode_bytes(lists: list[list[int]]) -> list[str]:
    """A byte-level decoder, as the tokenizers library's: bytes joined, then UTF-8 with U+FFFD."""
    return [b"".join(TOKEN_BYTES[i] for i in ids).decode("utf-8", "replace") for ids in lists]


def _matched(pattern: str, ids: list[int], fast: bool = True) -> list[int]:
    """Positions of the tokens `pattern` matches in `ids` (BOS first)."""
    (decoded,) = decode_sequences([ids], _decode_bytes, {BOS, EOS}, TOKEN_BYTES if fast else None)
    return np.flatnonzero(matched_tokens(compile_pattern(pattern), decoded, LATER)).tolist()


@pytest.mark.parametrize("fast", [True, False], ids=["from bytes", "prefix by prefix"])
def test_a_token_that_splits_a_character_holds_it(fast):
    ids = [BOS, 2, 3, 4, 5]  # "caf" + c3 | a9 + "!" = "café!"
    (d,) = decode_sequences([ids], _decode_bytes, {BOS, EOS}, TOKEN_BYTES if fast else None)
    assert d.text == "café!"
    # The prefix ending in c3 decodes to "caf\ufffd": the character is token 2's; token 3
    # (a9) completes it and has no text of its own.
    assert d.ends.tolist() == [0, 3, 4, 4, 5]
    assert _matched("é", ids, fast) == [2]
    assert _matched("fé", ids, fast) == [2]
    assert _matched("é!", ids, fast) == [4]  # the match's last character is "!"
    assert _matched("caf", ids, fast) == [1]
    assert _matched("a", ids, fast) == [1]


def test_special_tokens_decode_to_nothing_and_bos_is_left_out():
    ids = [BOS, 8, EOS, 7, EOS]  # "f" <eos> "(" <eos>: the text is "f("
    (d,) = decode_sequences([ids], _decode_bytes, {BOS, EOS}, TOKEN_BYTES)
    assert d.text == "f("
    assert d.ends.tolist() == [0, 1, 1, 2, 2]
    assert _matched(r"f\(", ids) == [3]  # across the EOS, which has no text
    assert _matched("endoftext|<s>", ids) == []
    assert _matched("f", ids) == [1]


def test_only_non_empty_matches_count_and_each_match_marks_one_token():
    ids = [BOS, 6, 6, 7, 8]  # " x x(f"
    assert _matched("y*", ids) == []  # empty matches everywhere: nothing matched
    assert _matched("x", ids) == [1, 2]
    assert _matched(r" x x\(", ids) == [3]
    assert _matched(r"\w", ids) == [1, 2, 4]


def test_bad_and_catastrophic_patterns():
    for bad, words in [("(", "missing ), unterminated subpattern at position 0"), ("a{2,1}", "min repeat greater")]:
        with pytest.raises(PatternError, match=re.escape(words)):
            compile_pattern(bad)
    with pytest.raises(PatternError, match="empty"):
        compile_pattern("")
    for big in ("x{300000}", "(?:ab{100}){100}", "(?=a{20000,})"):  # the regex module would unroll them for seconds
        with pytest.raises(PatternError, match="counted repeats are too large"):
            compile_pattern(big)
    compile_pattern("(?:ab{10}){100}|a+b*")  # 1,100 items: fine
    with pytest.raises(PatternError, match="Ambiguous"):
        compile_pattern("[[:alpha:]]")  # re reads it one way today, another later: refused
    text = "a" * 60 + "!"
    decoded = Decoded(text, np.arange(len(text) + 1))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        matched_tokens(compile_pattern(r"(?:(?:a|a)+)+$x"), decoded, time.monotonic() + 0.2)
    assert time.monotonic() - started < 2


# -- the API, against a direct computation ---------------------------------------------------
@pytest.fixture(scope="module")
def direct(tiny_model_dir, tiny_sae_dir, db):
    """Activations of a unit on stored sequences from TransformerLens (and SAELens), the
    literal matching rule (each prefix decoded by the tokenizer, stdlib re), and the
    stored sequences."""
    import torch
    from sae_lens import SAE
    from tokenizers import Tokenizer

    from actscope.indexer.model.loading import ModelSpec, load_model

    loaded = load_model(ModelSpec("native", str(tiny_model_dir), "tiny"), "cpu")
    sae = SAE.load_from_disk(str(tiny_sae_dir))
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    special = {loaded.bos_token_id, loaded.eos_token_id}
    seqs = dict(db.execute("SELECT seq, token_ids FROM sequences ORDER BY seq").fetchall())

    class Direct:
        sequences = seqs

        @staticmethod
        def acts(hook: str, unit: int, sae_encode: bool = False) -> dict[int, np.ndarray]:
            tokens = torch.tensor([seqs[s] for s in sorted(seqs)])
            with torch.no_grad():
                _, cache = loaded.model.run_with_cache(tokens, names_filter=[hook])
                act = cache[hook]
                if sae_encode:
                    act = sae.encode(act)
            values = act[..., unit].float().numpy()
            return {s: values[i] for i, s in enumerate(sorted(seqs))}

        @staticmethod
        def matched(pattern: str, seq: int) -> np.ndarray:
            ids = seqs[seq]
            kept = [(k, i) for k, i in enumerate(ids) if k > 0 and i not in special]
            ends = {}
            for n, (k, _) in enumerate(kept):
                ends[k] = len(tokenizer.decode([i for _, i in kept[: n + 1]], skip_special_tokens=False))
            text = tokenizer.decode([i for _, i in kept], skip_special_tokens=False)
            out = np.zeros(len(ids), dtype=bool)
            for m in re.finditer(pattern, text):
                if m.end() > m.start():
                    last = m.end() - 1
                    k = next(k for k, _ in kept if ends[k] > last)  # the first token whose text reaches it
                    out[k] = True
            return out

    return Direct


def _reference(direct, acts, pattern, seqs, threshold):
    a = np.concatenate([acts[s][1:] for s in seqs]).astype(np.float64)
    m = np.concatenate([direct.matched(pattern, s)[1:] for s in seqs])
    active = a > threshold
    pos, neg = a[m], a[~m]
    auroc = (
        float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())
        if pos.size and neg.size
        else None
    )
    return (
        {
            "n_tokens": a.size,
            "n_matched": int(m.sum()),
            "n_active": int(active.sum()),
            "precision": (active & m).sum() / active.sum() if active.any() else None,
            "recall": (active & m).sum() / m.sum() if m.any() else None,
            "auroc": auroc,
        },
        a,
        m,
    )


def _check_figures(got, want):
    for key in ("n_tokens", "n_matched", "n_active"):
        assert got[key] == want[key], key
    for key in ("precision", "recall", "auroc"):
        if want[key] is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(want[key], abs=1e-9), key


def test_neuron_figures_match_a_direct_computation(client, direct, db):
    unit, pattern = 7, r"[a-z]\(|self"
    acts = direct.acts("blocks.0.mlp.hook_post", unit)
    all_seqs = sorted(direct.sequences)
    # The default threshold of a neuron: its band edge at the 99th percentile.
    (edge,) = db.execute(
        "SELECT lo FROM bands WHERE source = '0-mlp' AND unit = ? AND abs(q_lo - 0.99) < 1e-9", [unit]
    ).fetchone()
    r = client.get(f"/api/{M}/0-mlp/{unit}/hypothesis", params={"regex": pattern, "sequences": 1000})
    assert r.status_code == 200, r.text
    data = r.json()
    schemas.HypothesisOut.model_validate(data)
    assert data["threshold"] == pytest.approx(edge) and data["threshold_default"] is True
    assert data["seqs"] == all_seqs and data["n_sequences"] == len(all_seqs)  # fewer than asked: all
    want, _, _ = _reference(direct, acts, pattern, all_seqs, data["threshold"])
    assert 0 < want["n_matched"] < want["n_tokens"] and want["n_active"] > 0  # a test that can fail
    _check_figures(data, want)
    # The top-example stratum: the sequences of the unit's top examples, by rank.
    top = [
        s
        for (s,) in db.execute(
            "SELECT seq FROM examples WHERE source = '0-mlp' AND unit = ? AND band IS NULL ORDER BY rank", [unit]
        ).fetchall()
    ]
    t = data["top_examples"]
    assert t["seqs"] == list(dict.fromkeys(top))
    _check_figures(t, _reference(direct, acts, pattern, t["seqs"], data["threshold"])[0])
    # Disagreements: active without a match, highest first; matched and not active, lowest first.
    fp, fn = data["false_positives"], data["false_negatives"]
    assert fp and fn
    for ex in fp + fn:
        assert ex["act"] == pytest.approx(float(acts[ex["seq"]][ex["pos"]]), abs=1e-5)
        assert ex["token_ids"] == direct.sequences[ex["seq"]][ex["start"] : ex["start"] + len(ex["token_ids"])]
        assert ex["acts"][ex["focus"]] == pytest.approx(ex["act"], abs=1e-6)
        assert (
            ex["matched"]
            == direct.matched(pattern, ex["seq"])[ex["start"] : ex["start"] + len(ex["token_ids"])].tolist()
        )
    assert all(ex["act"] > data["threshold"] and not ex["matched"][ex["focus"]] for ex in fp)
    assert all(ex["act"] <= data["threshold"] and ex["matched"][ex["focus"]] for ex in fn)
    assert [ex["act"] for ex in fp] == sorted((ex["act"] for ex in fp), reverse=True)
    assert [ex["act"] for ex in fn] == sorted(ex["act"] for ex in fn)
    # The highest unexplained activation of the sample is the first false positive.
    best = max(
        (float(acts[s][p]), s)
        for s in all_seqs
        for p, hit in enumerate(direct.matched(pattern, s))
        if p > 0 and not hit and acts[s][p] > data["threshold"]
    )
    assert (fp[0]["act"], fp[0]["seq"]) == pytest.approx(best, abs=1e-5)


def test_sparse_unit_a_seeded_sample_and_a_moved_threshold(client, direct):
    unit, pattern = 11, r"\bdef\b"
    acts = direct.acts("blocks.1.hook_resid_post", unit, sae_encode=True)
    n = len(direct.sequences)
    r = client.get(f"/api/{M}/1-res-sae/{unit}/hypothesis", params={"regex": pattern, "sequences": 20, "seed": 3})
    data = r.json()
    assert data["threshold"] == 0 and data["threshold_default"] is True  # a sparse kind: "fires"
    assert data["seqs"] == sorted(np.random.default_rng(3).choice(n, 20, replace=False).tolist())
    _check_figures(data, _reference(direct, acts, pattern, data["seqs"], 0.0)[0])
    moved = client.get(
        f"/api/{M}/1-res-sae/{unit}/hypothesis", params={"regex": pattern, "sequences": 20, "seed": 3, "threshold": 0.5}
    ).json()
    assert moved["threshold"] == 0.5 and moved["threshold_default"] is False
    _check_figures(moved, _reference(direct, acts, pattern, data["seqs"], 0.5)[0])


def test_results_and_activations_are_kept(client):
    jobs = client.app.state.hypotheses
    url = f"/api/{M}/1-mlp/4/hypothesis"
    first = client.get(url, params={"regex": "in"}).json()
    started, passes = jobs.started, client.app.state.catalog.live(M).forward_passes
    assert client.get(url, params={"regex": "in"}).json() == first  # the same query: kept
    assert jobs.started == started
    other = client.get(url, params={"regex": "re", "threshold": "-1"}).json()  # another regex, same unit
    assert jobs.started == started + 1 and other["regex"] == "re"
    assert client.app.state.catalog.live(M).forward_passes == passes  # decoded and run before: no model turn


@pytest.mark.parametrize(
    ("query", "field", "words"),
    [
        ({"regex": "(unclosed"}, "regex", "Not a valid regular expression: missing )"),
        ({"regex": "a", "sequences": 0}, "sequences", "between 1 and 1,024"),
        ({"regex": "a", "threshold": "nan"}, "threshold", "finite"),
    ],
)
def test_bad_input_is_a_422_in_the_error_shape_and_shown_next_to_the_form(client, query, field, words):
    r = client.get(f"/api/{M}/0-mlp/3/hypothesis", params=query)
    assert r.status_code == 422
    assert set(r.json()) == {"error"} and words in r.json()["error"]["message"]
    page = client.get(f"/{M}/0-mlp/3/hypothesis", params=query)
    assert page.status_code == 422
    soup = BeautifulSoup(page.text, "html.parser")
    assert words in soup.select_one(f"#hyp-{field}-error").get_text()
    box = soup.select_one(f"#hyp-{field}")
    assert box["aria-invalid"] == "true" and box["value"] == str(query[field])  # the text kept


def test_catastrophic_pattern_is_stopped_by_the_time_limit(client, monkeypatch):
    monkeypatch.setattr(hypothesis_run, "MATCH_TIME_LIMIT_S", 0.3)
    started = time.monotonic()
    r = client.get(f"/api/{M}/0-mlp/2/hypothesis", params={"regex": r"(?:(?:[\s\S]|[\s\S])+)+$x"})
    assert time.monotonic() - started < 10
    assert r.status_code == 422 and "took more than 0.3 s" in r.json()["error"]["message"]


def test_page_without_javascript_shows_progress_then_the_figures(client):
    url = f"/{M}/0-mlp/9/hypothesis?regex=%5Cbreturn%5Cb&sequences=50&seed=1"
    deadline = time.monotonic() + 30
    pages = []
    while time.monotonic() < deadline:
        r = client.get(url)
        assert r.status_code == 200
        soup = BeautifulSoup(r.text, "html.parser")
        pages.append(soup)
        if soup.select_one(".hyp-figures"):
            break
        # Running: htmx asks again for the block; without JavaScript the page refreshes.
        result = soup.select_one("#hypothesis-result")
        assert "poll=1" in result["hx-get"] and soup.select_one("head noscript meta[http-equiv=refresh]")
        time.sleep(0.2)
    soup = pages[-1]
    api = client.get(f"/api{url}").json()
    assert soup.select_one(".hyp-precision td").get_text() == (
        f"{api['precision'] * 100:.1f}%" if api["precision"] is not None else "\u2013"
    )
    assert soup.select_one("#hyp-regex")["value"] == r"\breturn\b"
    assert soup.select_one("link[rel=alternate]")["href"] == f"/api{url}"


def test_live_budget_pays_for_the_tokens_run(web_index):
    with make_client(web_index, live_tokens_per_minute=100) as c:
        first = c.get(f"/api/{M}/0-mlp/1/hypothesis", params={"regex": "a", "sequences": 10})
        assert first.status_code == 200  # admitted while the budget is above 0, charged 10 x ctx tokens
        again = c.get(f"/api/{M}/0-mlp/1/hypothesis", params={"regex": "b", "sequences": 10})
        assert again.status_code == 200  # the same unit and sequences: nothing to run, nothing to pay
        other = c.get(f"/api/{M}/0-mlp/2/hypothesis", params={"regex": "a", "sequences": 10})
        assert other.status_code == 429 and "retry-after" in other.headers


PYDANTIC_WORDS = ("Input should", "Field required", "valid integer", "unable to parse", "String should")


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ({"regex": "a", "sequences": "abc"}, "sequences", "sequences must be a whole number, not 'abc'."),
        ({"regex": "a", "seed": "1.5"}, "seed", "seed must be a whole number, not '1.5'."),
        ({"regex": "a", "threshold": "high"}, "threshold", "threshold must be a number, not 'high'."),
    ],
)
def test_unparsable_numbers_are_said_in_our_words_alike_on_the_page_and_the_api(client, query, field, message):
    api = client.get(f"/api/{M}/0-mlp/3/hypothesis", params=query)
    assert api.status_code == 422 and api.json()["error"]["message"] == message
    page = client.get(f"/{M}/0-mlp/3/hypothesis", params=query)
    assert page.status_code == 422
    soup = BeautifulSoup(page.text, "html.parser")
    assert soup.select_one(f"#hyp-{field}-error").get_text() == message
    assert soup.select_one(f"#hyp-{field}")["aria-invalid"] == "true"
    assert not any(w in page.text for w in PYDANTIC_WORDS)


def test_a_missing_regex_is_said_in_our_words(client):
    r = client.get(f"/api/{M}/0-mlp/3/hypothesis", params={"sequences": "8"})
    assert r.status_code == 422 and r.json()["error"]["message"] == "regex is required."
    r = client.get(f"/api/{M}/0-mlp/3/hypothesis", params={"regex": ""})
    assert r.status_code == 422 and r.json()["error"]["message"] == "regex must not be empty."
    both = client.get(f"/api/{M}/0-mlp/3/hypothesis", params={"sequences": "x"}).json()["error"]["message"]
    assert both == "regex is required. sequences must be a whole number, not 'x'."


def test_the_heading_names_the_kind_as_people_do(client):
    """The kind registry's label ("SAE feature"), not its slug ("sae")."""
    from actscope.indexer import kinds

    for source, index in (("1-res-sae", 3), ("0-mlp", 3)):
        kind = client.get(f"/api/{M}/{source}/{index}").json()["source"]["kind"]
        label = kinds.get(kind).label
        for url in (f"/{M}/{source}/{index}/hypothesis", f"/{M}/{source}/{index}"):
            h1 = BeautifulSoup(client.get(url).text, "html.parser").select_one("h1").get_text(" ")
            assert label in h1, (url, h1)
    assert kinds.get("sae").label == "SAE feature"
    assert "sae" not in BeautifulSoup(client.get(f"/{M}/1-res-sae/3/hypothesis").text, "html.parser").select_one(
        "h1"
    ).get_text(" ").replace("1-res-sae", "")
