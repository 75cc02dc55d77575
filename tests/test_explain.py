"""Explain (issue 18): ablation attribution and minimal examples, against brute force.

Every figure is checked against TransformerLens runs made here by hand: the sequence
with one token replaced, noise added to one token's embedding by a hook (the same
seeded draws), the sequence cut to a suffix with BOS prepended, one run each.
"""

from __future__ import annotations

import numpy as np
import pytest

from actscope.app import schemas

M = "tiny"
WINDOW = (6, 3)  # TINY_INDEX_OPTIONS["window"]


@pytest.fixture(scope="module")
def tl(tiny_model_dir, tiny_sae_dir):
    """The tiny model and SAE, loaded apart from the app."""
    from sae_lens import SAE

    from actscope.indexer.model.loading import ModelSpec, load_model

    loaded = load_model(ModelSpec("native", str(tiny_model_dir), "tiny"), "cpu")
    return loaded, SAE.load_from_disk(str(tiny_sae_dir))


def run_focus(tl, ids: list[int], hook: str, unit: int, focus: int, sae: bool = False, embed_add=None) -> float:
    """One direct run: unit's activation at `focus`; `embed_add` = (position, vector)
    added to the token embedding there."""
    import torch

    loaded, sae_model = tl
    seen = {}

    def save(act, hook):
        seen["act"] = act.detach()

    hooks = [(hook, save)]
    if embed_add is not None:
        at, vector = embed_add

        def add(embed, hook):
            embed = embed.clone()
            embed[0, at] += vector
            return embed

        hooks.insert(0, ("hook_embed", add))
    with torch.no_grad():
        loaded.model.run_with_hooks(torch.tensor([ids]), return_type=None, fwd_hooks=hooks)
    act = seen["act"][0]
    if sae:
        act = sae_model.encode(act)
    return float(act[focus, unit])


def top_example(db, source: str, unit: int, rank: int = 0) -> tuple[int, int, float, list[int]]:
    seq, pos, act = db.execute(
        "SELECT seq, pos, act FROM examples WHERE source = ? AND unit = ? AND band IS NULL AND rank = ?",
        [source, unit, rank],
    ).fetchone()
    (ids,) = db.execute("SELECT token_ids FROM sequences WHERE seq = ?", [seq]).fetchone()
    return seq, pos, act, list(ids)


def shortest_by_hand(tl, ids, hook, unit, pos, first, full, threshold, sae=False):
    """(start, act) of the shortest suffix keeping `threshold` of `full`, one run each."""
    for s in range(pos, first - 1, -1):
        value = run_focus(tl, [ids[0]] + ids[s : pos + 1], hook, unit, pos - s + 1, sae)
        if value >= threshold * full:
            return s, value
    return None


@pytest.mark.parametrize(
    "source,hook,unit,sae",
    [("0-mlp", "blocks.0.mlp.hook_post", 7, False), ("1-res-sae", "blocks.1.hook_resid_post", 3, True)],
)
def test_replace_and_truncation_match_runs_by_hand(client, db, tl, source, hook, unit, sae):
    seq, pos, stored, ids = top_example(db, source, unit)
    r = client.get(f"/api/{M}/{source}/{unit}/explain?seq={seq}&pos={pos}")
    assert r.status_code == 200, r.text
    d = r.json()
    schemas.ExplainOut.model_validate(d)
    start = max(0, pos - WINDOW[0])
    assert d["start"] == start and d["focus"] == pos - start
    assert d["token_ids"] == ids[start : pos + WINDOW[1] + 1]
    assert d["baseline_token_id"] == tl[0].bos_token_id
    prefix = ids[: pos + 1]
    full = run_focus(tl, prefix, hook, unit, pos, sae)
    assert d["act"] == pytest.approx(full, abs=1e-4) and d["act"] == pytest.approx(stored, abs=1e-3)
    for k, p in enumerate(range(start, start + len(d["token_ids"]))):
        if p == 0 or p > pos:  # BOS and the tokens after the focus are never ablated
            assert d["ablated"][k] is None and d["delta"][k] is None
            continue
        replaced = prefix[:p] + [d["baseline_token_id"]] + prefix[p + 1 :]
        by_hand = run_focus(tl, replaced, hook, unit, pos, sae)
        assert d["ablated"][k] == pytest.approx(by_hand, abs=1e-4), p
        assert d["delta"][k] == pytest.approx(full - by_hand, abs=1e-4), p
    # The attribution is not trivially zero: some token matters.
    assert max(abs(v) for v in d["delta"] if v is not None) > 1e-3
    cut = shortest_by_hand(tl, ids, hook, unit, pos, max(1, start), full, 0.9, sae)
    if cut is None:
        assert d["truncation"] is None
    else:
        t = d["truncation"]
        assert t["start"] == cut[0] and t["act"] == pytest.approx(cut[1], abs=1e-4)
        assert t["token_ids"] == ids[cut[0] : pos + 1] and t["threshold"] == 0.9


def test_noise_matches_the_same_draws_added_by_hand(client, db, tl):
    import torch

    source, hook, unit = "1-mlp", "blocks.1.mlp.hook_post", 11
    seq, pos, _, ids = top_example(db, source, unit)
    draws, sigma, seed = 3, 2.0, 5
    r = client.get(f"/api/{M}/{source}/{unit}/explain?seq={seq}&pos={pos}&method=noise&sigma=2&draws=3&seed=5")
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["method"], d["sigma"], d["draws"], d["seed"], d["baseline_token_id"]) == ("noise", 2.0, 3, 5, None)
    again = client.get(d["url"].replace(f"/{M}/", f"/api/{M}/", 1)).json()  # the permalink's twin
    assert again["ablated"] == d["ablated"]
    w_e = tl[0].model.W_E.detach().numpy().astype(np.float64)
    std = torch.tensor(w_e.std(axis=0, ddof=1), dtype=torch.float32)
    start = d["start"]
    positions = list(range(max(1, start), pos + 1))
    noise = torch.randn((draws, len(positions), w_e.shape[1]), generator=torch.Generator().manual_seed(seed))
    prefix = ids[: pos + 1]
    full = run_focus(tl, prefix, hook, unit, pos)
    for j, p in enumerate(positions):
        by_hand = np.mean(
            [run_focus(tl, prefix, hook, unit, pos, embed_add=(p, sigma * std * noise[k, j])) for k in range(draws)]
        )
        k = p - start
        assert d["ablated"][k] == pytest.approx(by_hand, abs=1e-4), p
        assert d["delta"][k] == pytest.approx(full - by_hand, abs=1e-4), p
    assert max(abs(v) for v in d["delta"] if v is not None) > 1e-3
    # Another seed, other draws.
    other = client.get(f"/api/{M}/{source}/{unit}/explain?seq={seq}&pos={pos}&method=noise&sigma=2&draws=3&seed=6")
    assert other.json()["ablated"] != d["ablated"]


def test_text_focus_is_the_last_token_or_pos(client, tl):
    text = "def wrap(text, width):\n    return text.split()"
    hook, unit = "blocks.0.mlp.hook_post", 7
    r = client.get(f"/api/{M}/0-mlp/{unit}/explain", params={"text": text, "threshold": "0.5"})
    assert r.status_code == 200, r.text
    d = r.json()
    ids = [tl[0].bos_token_id] + tl[0].tokenizer(text, add_special_tokens=False)["input_ids"]
    last = len(ids) - 1
    assert d["seq"] is None and d["text"] == text and d["pos"] == last
    assert d["start"] == last - WINDOW[0] and d["token_ids"] == ids[last - WINDOW[0] :]
    full = run_focus(tl, ids, hook, unit, last)
    assert d["act"] == pytest.approx(full, abs=1e-4)
    p = last - 2
    replaced = ids[:p] + [ids[0]] + ids[p + 1 :]
    assert d["ablated"][WINDOW[0] - 2] == pytest.approx(run_focus(tl, replaced, hook, unit, last), abs=1e-4)
    cut = shortest_by_hand(tl, ids, hook, unit, last, last - WINDOW[0], full, 0.5)
    assert (d["truncation"] or {}).get("start") == (cut[0] if cut else None)
    at = client.get(f"/api/{M}/0-mlp/{unit}/explain", params={"text": text, "pos": 3, "baseline": 5}).json()
    assert at["pos"] == 3 and at["start"] == 0 and at["focus"] == 3 and at["baseline_token_id"] == 5
    assert "baseline=5" in at["url"] and "pos=3" in at["url"]  # its permalink says all of it
    replaced = ids[:2] + [5] + ids[3:4]
    assert at["ablated"][2] == pytest.approx(run_focus(tl, replaced, hook, unit, 3), abs=1e-4)


@pytest.mark.parametrize(
    "query,status,words",
    [
        ("seq=100000&pos=3", 404, "No sequence 100000"),
        ("seq=0&pos=0", 404, "0 is BOS"),
        ("seq=0&pos=32", 404, "1 to 31"),
        ("seq=0", 422, "seq and pos"),
        ("", 422, "seq and pos"),
        ("seq=0&pos=3&text=abc", 422, "not both"),
        ("seq=0&pos=3&method=zero", 422, "replace or noise"),
        ("seq=0&pos=3&method=noise&draws=0", 422, "draws"),
        ("seq=0&pos=3&threshold=1.5", 422, "threshold"),
        ("seq=0&pos=3&baseline=100000", 404, "baseline"),
        ("seq=abc&pos=3", 422, "seq"),
        ("text=ab&pos=40", 404, "measured position of the text"),
        ("text=%20%20", 422, "empty"),
    ],
)
def test_bad_input_gets_the_one_error_shape(client, query, status, words):
    r = client.get(f"/api/{M}/0-mlp/7/explain?{query}")
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["status"] == status
    assert words in body["error"]["message"]


def test_unknown_unit_and_source_are_404(client):
    for url in (f"/api/{M}/0-mlp/64/explain?seq=0&pos=3", f"/api/{M}/nope/1/explain?seq=0&pos=3"):
        r = client.get(url)
        assert r.status_code == 404 and set(r.json()) == {"error"}


def test_minimal_summary_sums_the_top_examples(client, db, tl):
    source, hook, unit = "0-mlp", "blocks.0.mlp.hook_post", 7
    r = client.get(f"/api/{M}/{source}/{unit}/minimal?threshold=0.9")
    assert r.status_code == 200, r.text
    d = r.json()
    schemas.MinimalOut.model_validate(d)
    (n_top,) = db.execute(
        "SELECT count(*) FROM examples WHERE source = ? AND unit = ? AND band IS NULL", [source, unit]
    ).fetchone()
    assert d["n_examples"] == min(n_top, 20) == len(d["examples"])
    lengths = []
    for rank, ex in enumerate(d["examples"][:3]):
        seq, pos, _, ids = top_example(db, source, unit, rank)
        assert (ex["seq"], ex["pos"]) == (seq, pos)
        full = run_focus(tl, ids[: pos + 1], hook, unit, pos)
        cut = shortest_by_hand(tl, ids, hook, unit, pos, max(1, pos - WINDOW[0]), full, 0.9)
        assert (ex["truncation"] or {}).get("start") == (cut[0] if cut else None)
        # The same as the example's own explanation.
        one = client.get(f"/api/{M}/{source}/{unit}/explain?seq={seq}&pos={pos}").json()
        assert (one["truncation"] is None) == (ex["truncation"] is None)
        if ex["truncation"] is not None:
            assert one["truncation"]["start"] == ex["truncation"]["start"]
            assert one["truncation"]["act"] == pytest.approx(ex["truncation"]["act"], abs=1e-5)
    lengths = [e["pos"] - e["truncation"]["start"] + 1 for e in d["examples"] if e["truncation"]]
    assert d["n_found"] == len(lengths) and d["max_tokens"] == (max(lengths) if lengths else None)


def test_every_kind_through_the_registry(tiny_model_dir):
    """Heads and direct-effect twins too: the batched explanation equals one run per
    replaced sequence through the live model's own single-sequence path."""
    from actscope.app.explain import Ablation, Target, explain
    from actscope.app.live import LiveModel
    from actscope.indexer.kinds import SourceRequest, build_sources
    from actscope.indexer.model.loading import ModelSpec, load_model

    loaded = load_model(ModelSpec("native", str(tiny_model_dir), "tiny"), "cpu")
    request = SourceRequest(head_metrics=["prev-token", "induction"], dla=True)
    sources = build_sources(loaded.model, request)
    live = LiveModel(loaded, sources, 32, "tiny")
    ids = [loaded.bos_token_id] + loaded.tokenizer("x = y + x = y + 1", add_special_tokens=False)["input_ids"]
    kinds_seen = set()
    for slug, index in (("1-attn-induction", 2), ("0-attn-prev-token", 1), ("0-mlp-dla", 5), ("1-mlp", 4)):
        source = live.sources[slug]
        kinds_seen.add(source.kind.name)
        tail = source.kind.tail
        focus = len(ids) - 1 - tail
        target = Target(slug, index, tuple(ids), focus, 1)
        done = explain(live, target, Ablation(baseline=7), 0.9)
        row = ids[: focus + 1 + tail]
        assert done.act == pytest.approx(float(live.activations(row, slug)[focus, index]), abs=1e-5)
        for p in range(1, focus + 1):
            replaced = row[:p] + [7] + row[p + 1 :]
            alone = float(live.activations(replaced, slug)[focus, index])
            assert done.ablated[p - 1] == pytest.approx(alone, abs=1e-5), (slug, p)
    assert kinds_seen == {"head", "dla", "neuron"}


def test_unit_page_explains_the_visitors_text_after_the_page(client):
    """explain=text: the page carries a box that loads the attribution (htmx), and a plain
    link to the same for a browser without JavaScript; neither is computed with the page."""
    from bs4 import BeautifulSoup

    text = "def wrap(text, width):"
    page = client.get(f"/{M}/0-mlp/7", params={"text": text, "explain": "text"})
    assert page.status_code == 200
    box = BeautifulSoup(page.text, "html.parser").select_one("#live-result .why")
    assert box is not None and box["hx-trigger"] == "load" and box.select_one(".why-row") is None
    url = box["hx-get"]
    assert box.select_one("a.why-page")["href"] == url
    api = client.get("/api" + url).json()
    assert api["text"] == text and api["pos"] == len(api["token_ids"]) - 1 + api["start"]
    fragment = BeautifulSoup(client.get(url, headers={"HX-Request": "true"}).text, "html.parser")
    shown = [t.get("data-act") for t in fragment.select(".why-row .t")]
    assert shown == [None if v is None else f"{v:.4f}" for v in api["delta"]]
    assert fragment.select_one("h1") is None  # the block alone
    full = BeautifulSoup(client.get(url).text, "html.parser")  # no JavaScript: a page of its own
    assert full.select_one("h1") is not None and len(full.select(".why-row .t")) == len(shown)
    # Other links of the page keep the state; "hide" drops it.
    hide = BeautifulSoup(page.text, "html.parser").select_one("#live-result a.why-link")["href"]
    assert "explain" not in hide and "text=" in hide


def test_what_mattered_links_keep_the_page_state(client):
    from urllib.parse import parse_qs, urlsplit

    from bs4 import BeautifulSoup

    page = client.get(f"/{M}/0-mlp/7", params={"per_page": "3", "text": "abc", "open": "1:16"})
    items = BeautifulSoup(page.text, "html.parser").select("li.example")
    assert len(items) == 3
    for li in items:
        query = parse_qs(urlsplit(li.select_one("a.why-link")["href"]).query)
        key = li.select_one("a.full-link")["data-open"]
        assert query == {"per_page": ["3"], "text": ["abc"], "open": ["1:16"], "explain": [key]}


def test_nothing_fired_has_no_minimal_example():
    """A focus where the unit is at 0 keeps nothing: every suffix would 'keep 100% of 0'."""
    from actscope.app.explain import keeps

    assert not keeps(0.0, 0.0, 0.9) and not keeps(1.0, 0.0, 0.9)
    assert keeps(2.0, 2.0, 0.9) and not keeps(1.7, 2.0, 0.9)
    assert keeps(-1.9, -2.0, 0.9) and not keeps(-1.0, -2.0, 0.9)


def test_the_summary_lines_figures_are_a_brute_force_count(client, db, tl):
    """ "≤ L tokens keep ≥ 90% for n of N top examples": n counts the top examples that
    some suffix of at most L tokens keeps (one run per suffix here), and L is the least
    length for which that count is n (the longest of their minimal examples)."""
    from bs4 import BeautifulSoup

    source, hook, unit = "0-mlp", "blocks.0.mlp.hook_post", 7
    d = client.get(f"/api/{M}/{source}/{unit}/minimal").json()
    shortest: list[int | None] = []
    for rank in range(d["n_examples"]):
        seq, pos, _, ids = top_example(db, source, unit, rank)
        full = run_focus(tl, ids[: pos + 1], hook, unit, pos)
        cut = shortest_by_hand(tl, ids, hook, unit, pos, max(1, pos - WINDOW[0]), full, 0.9)
        shortest.append(None if cut is None else pos - cut[0] + 1)
    found = [n for n in shortest if n is not None]
    assert found, "no top example has a minimal example: nothing to count"

    def kept_within(length: int) -> int:
        return sum(1 for n in found if n <= length)

    L = d["max_tokens"]
    assert d["n_found"] == len(found) == kept_within(L)
    assert max(found) == L and kept_within(L - 1) < d["n_found"]  # no shorter L counts as many
    line = BeautifulSoup(client.get(f"/{M}/{source}/{unit}/minimal").text, "html.parser").select_one(
        "#minimal-summary strong"
    )
    words = "token keeps" if L == 1 else "tokens keep"
    assert (
        line.get_text(" ").split()
        == (
            f"≤ {L} {words} ≥ 90% for {len(found)} of {len(shortest)} top example{'s' if len(shortest) != 1 else ''}"
        ).split()
    )
