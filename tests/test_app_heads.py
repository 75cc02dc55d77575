"""A head's unit page and its JSON twin: no logit table, every shown example tinted by
where its focus token attends (checked against `run_with_cache` on the stored tokens),
the strongest source marked, live text measured by the head metric."""

from __future__ import annotations

import re

import numpy as np
import pytest
from bs4 import BeautifulSoup

from fixtures_web import make_client

ATOL = 1e-5


@pytest.fixture(scope="module")
def heads_client(tiny_heads_index):
    with make_client(tiny_heads_index) as c:
        yield c


@pytest.fixture(scope="module")
def model_and_sequences(tiny_heads_index, tiny_model_dir):
    import duckdb
    import torch

    from actscope.indexer.model.loading import load_model, resolve_model_spec

    con = duckdb.connect(str(tiny_heads_index), read_only=True)
    rows = con.execute("SELECT token_ids FROM sequences ORDER BY seq").fetchall()
    con.close()
    loaded = load_model(resolve_model_spec(str(tiny_model_dir)), "cpu")
    tokens = torch.tensor([r[0] for r in rows])
    with torch.no_grad():
        _, cache = loaded.model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    patterns = {layer: cache[f"blocks.{layer}.attn.hook_pattern"].numpy() for layer in (0, 1)}
    return loaded, tokens.numpy(), patterns


def _check_attention(ex, pattern_row, seq_tokens):
    """An example's `attention` against the focus row A[pos, :] of the reference."""
    att = ex["attention"]
    pos, start = ex["pos"], ex["start"]
    expected = [pattern_row[s] if s <= pos else 0.0 for s in range(start, start + len(ex["token_ids"]))]
    np.testing.assert_allclose(att["weights"], expected, atol=ATOL)
    assert att["bos"] == pytest.approx(pattern_row[0], abs=ATOL)
    best = 1 + int(np.argmax(pattern_row[1 : pos + 1]))
    top = att["strongest"]
    assert (top["pos"], top["token_id"]) == (best, int(seq_tokens[best]))
    assert top["weight"] == pytest.approx(pattern_row[best], abs=ATOL)
    assert top["in_window"] == (start <= best < start + len(ex["token_ids"]))


@pytest.mark.parametrize("slug", ["0-attn-prev-token", "1-attn-induction"])
def test_json_examples_carry_where_the_focus_attends(heads_client, model_and_sequences, slug):
    _, tokens, patterns = model_and_sequences
    layer = int(slug[0])
    for head in range(4):
        d = heads_client.get(f"/api/tiny/{slug}/{head}").json()
        assert d["logits"] is None
        assert d["attention"] == {"hook": f"blocks.{layer}.attn.hook_pattern", "head": head, "error": None}
        assert d["source"]["description"].startswith(slug.split("-attn-")[1] + ": ")
        assert len(d["top"]) == 5
        for ex in d["top"]:
            _check_attention(ex, patterns[layer][ex["seq"], head, ex["pos"]], tokens[ex["seq"]])
        # The band shown carries it; the other sets' examples do not (bounded live work).
        band = next(b for b in d["bands"] if b["examples"])
        assert all("attention" not in ex for ex in band["examples"])
        shown = heads_client.get(f"/api/tiny/{slug}/{head}?band={band['band']}").json()
        for ex in shown["bands"][band["band"]]["examples"]:
            _check_attention(ex, patterns[layer][ex["seq"], head, ex["pos"]], tokens[ex["seq"]])


def _outside_example(client):
    """(url, example index on the page, example) of a shown example whose strongest
    source lies outside its window."""
    for slug in ("1-attn-max-attn", "0-attn-max-attn", "1-attn-entropy", "0-attn-entropy"):
        for head in range(4):
            d = client.get(f"/api/tiny/{slug}/{head}").json()
            for band in [None] + [b["band"] for b in d["bands"] if b["count"]]:
                url = f"/tiny/{slug}/{head}" + ("" if band is None else f"?band={band}")
                page = client.get("/api" + url).json()
                shown = page["top"] if band is None else page["bands"][band]["examples"]
                for i, ex in enumerate(shown):
                    if not ex["attention"]["strongest"]["in_window"]:
                        return url, i, ex
    raise AssertionError("no shown example attends most outside its window")


def test_page_marks_the_strongest_source_and_has_no_logit_table(heads_client):
    html = heads_client.get("/tiny/1-attn-prev-token/2").text
    soup = BeautifulSoup(html, "html.parser")
    assert soup.select(".logits") == [] and "Output effect on logits" not in html
    assert "attention-help" in html
    d = heads_client.get("/api/tiny/1-attn-prev-token/2").json()
    items = soup.select("#examples li.example")
    assert len(items) == len(d["top"])
    checked = 0
    for li, ex in zip(items, d["top"]):
        spans = li.select(".toks > .t")
        if len(spans) != len(ex["token_ids"]):
            continue  # a window with multi-byte characters drawn over several tokens
        att = ex["attention"]
        np.testing.assert_allclose([float(s["data-act"]) for s in spans[1:]], att["weights"][1:], atol=1e-4)
        marked = [i for i, s in enumerate(spans) if "attn-src" in s["class"]]
        assert marked == [att["strongest"]["pos"] - ex["start"]]
        assert f"position {att['strongest']['pos']}, in the window" in li.select_one(".attn-note").text
        checked += 1
    assert checked >= 3


def test_a_source_outside_the_window_is_named_and_linked(heads_client):
    url, i, ex = _outside_example(heads_client)
    soup = BeautifulSoup(heads_client.get(url).text, "html.parser")
    li = soup.select("#examples li.example")[i]
    top = ex["attention"]["strongest"]
    assert top["pos"] < ex["start"]
    assert li.select(".attn-src") == []
    note = li.select_one(".attn-note")
    assert f"position {top['pos']}, outside the window" in note.text
    link = note.select_one("a.attn-seq")["href"]
    assert re.fullmatch(rf"/tiny/sequences/{ex['seq']}\?source=[\w-]+&index=\d&pos={ex['pos']}", link)
    # The sequence page, and the example opened in place, show the whole focus row.
    sep = "&" if "?" in url else "?"
    opened = BeautifulSoup(heads_client.get(f"{url}{sep}open={ex['seq']}:{ex['pos']}").text, "html.parser")
    for whole in (BeautifulSoup(heads_client.get(link).text, "html.parser"), opened.select_one(".full-seq")):
        spans = whole.select(".toks > .t")
        marked = [k for k, span in enumerate(spans) if "attn-src" in span["class"]]
        assert marked == [top["pos"]]
        assert float(spans[top["pos"]]["data-act"]) == pytest.approx(top["weight"], abs=1e-4)
        assert "attends most to" in whole.select_one(".attn-note").text


def test_live_text_is_measured_by_the_head_metric(heads_client, model_and_sequences):
    import torch

    loaded, _, _ = model_and_sequences
    text = "abc abc abc def abc"
    d = heads_client.get("/api/tiny/1-attn-induction/3", params={"text": text}).json()
    ids = d["live"]["token_ids"]
    with torch.no_grad():
        _, cache = loaded.model.run_with_cache(torch.tensor([ids]))
    pattern = cache["blocks.1.attn.hook_pattern"][0, 3].numpy()
    expected = [max([pattern[p, j + 1] for j in range(p) if ids[j] == ids[p]], default=0.0) for p in range(len(ids))]
    np.testing.assert_allclose(d["live"]["acts"], expected, atol=ATOL)
    assert max(expected) > 0  # the text repeats tokens
    page = heads_client.get("/tiny/1-attn-induction/3", params={"text": text}).text
    assert "Your text: tinted by the metric" in page
    tried = heads_client.get("/api/tiny/try", params={"text": text, "source": "1-attn-induction"}).json()
    assert tried["sources"]


def test_without_live_inference_examples_fall_back_to_the_metric(tiny_heads_index):
    with make_client(tiny_heads_index, live=False) as c:
        d = c.get("/api/tiny/0-attn-entropy/1").json()
        assert d["attention"]["error"] and all(ex["attention"] is None for ex in d["top"])
        soup = BeautifulSoup(c.get("/tiny/0-attn-entropy/1").text, "html.parser")
        assert "could not be computed" in soup.select_one(".attention-error").text
        first = soup.select_one("#examples li.example .t.focus")
        assert float(first["data-act"]) == pytest.approx(d["top"][0]["act"], abs=1e-4)
