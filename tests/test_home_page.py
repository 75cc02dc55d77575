"""The home page names the corpus and keeps the indexing machine's paths private; /docs
and /favicon.ico work offline; logit values are readable in both themes."""

from __future__ import annotations

import json

import pytest
from bs4 import BeautifulSoup
from contrast import contrast_of


def test_home_names_the_corpus_and_hides_the_indexing_paths(client, web_index, tiny_corpus_dir):
    html = client.get("/").text
    soup = BeautifulSoup(html, "html.parser")
    line = soup.select_one("p.corpus").get_text(" ", strip=True)
    assert soup.select_one(".corpus-name").get_text() == tiny_corpus_dir.name
    assert f"local files matching '{tiny_corpus_dir.name}'" in line
    data = client.get("/api").json()
    assert f"{data['n_tokens']:,} tokens in {data['n_sequences']:,} sequences" in line
    assert data["built_at"] and data["built_at"] in line
    # The run record sits behind a toggle, every absolute path reduced to its file name.
    record = soup.select_one("details.run")
    assert record is not None and "run_config" in record.get_text()
    assert data["meta"]["run_config"]["out"] == web_index.name
    assert data["meta"]["run_config"]["dataset"] == tiny_corpus_dir.name
    for text in (html, json.dumps(data)):
        assert str(tiny_corpus_dir) not in text and str(web_index.parent) not in text


def test_paths_are_reduced_wherever_they_sit():
    from actscope.app.index_record import built_at, corpus, without_paths

    record = {"run_config": json.dumps({"out": "/home/me/runs/a.duckdb", "saes": ["/m/sae", "toy-2l/res1"]})}
    assert without_paths(record) == {"run_config": {"out": "a.duckdb", "saes": ["sae", "toy-2l/res1"]}}
    assert without_paths(["C:\\data\\x.jsonl", "~/y.txt", "plain"]) == ["x.jsonl", "y.txt", "plain"]
    assert corpus({"dataset": "/srv/corpus/*.txt"}) == {"name": "*.txt", "source": "", "description": ""}
    assert built_at({"created_at": "2026-12-02T01:29:27+00:00"}) == "2026-12-02 01:29 UTC"
    assert built_at({"created_at": "yesterday"}) is None


def test_builtin_corpora_are_described():
    from actscope.indexer.corpus.documents import describe_corpus

    default = describe_corpus("default")
    assert (default.name, default.source) == ("default", "built-in")
    assert "Shakespeare" in default.description and "not trained on" in default.description
    assert "held-out" in describe_corpus("stdlib:heldout").description
    hub = describe_corpus("NeelNanda/pile-10k", split="train")
    assert hub.source == "Hugging Face Hub" and "split 'train'" in hub.description


def test_favicon_ico_is_the_site_icon(client):
    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    assert r.text.startswith("<svg") and "#e8590c" in r.text


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_docs_and_logit_values_follow_the_theme(browser, live_server, scheme):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme=scheme)
    page = context.new_page()
    remote = []
    page.on("request", lambda r: remote.append(r.url) if not r.url.startswith(live_server.url) else None)
    page.goto(live_server.url + "/docs")
    page.locator(".opblock-summary-path").first.wait_for()
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    swagger_filter = page.evaluate("getComputedStyle(document.querySelector('.swagger')).filter")
    if scheme == "dark":
        assert background == "rgb(21, 23, 28)" and "invert" in swagger_filter
    else:
        assert background == "rgb(255, 255, 255)" and swagger_filter == "none"
    assert [u for u in remote if not u.startswith("data:")] == []
    page.goto(live_server.url + "/tiny/1-mlp/3")
    for cls in ("pos-text", "neg-text"):
        values = page.locator(f".logit-table .{cls}")
        assert values.count() > 0
        assert contrast_of(values.first) >= 4.5, (scheme, cls)
    context.close()


_PLACEHOLDER_FITS_JS = """el => {
  const style = getComputedStyle(el);
  const ctx = document.createElement("canvas").getContext("2d");
  ctx.font = style.font;
  const room = el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  return {text: ctx.measureText(el.placeholder).width, room};
}"""


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 390])
def test_header_search_placeholder_is_whole(browser, live_server, width):
    context = browser.new_context(viewport={"width": width, "height": 800})
    page = context.new_page()
    for path, box in (("/tiny/1-mlp/3", "header .search input"), ("/", "section.model .search input")):
        page.goto(live_server.url + path)
        fit = page.locator(box).evaluate(_PLACEHOLDER_FITS_JS)
        assert fit["text"] <= fit["room"], (path, fit)
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    context.close()


@pytest.mark.browser
@pytest.mark.slow
def test_logit_tables_stack_on_phones(browser, live_server):
    context = browser.new_context(viewport={"width": 390, "height": 800})
    page = context.new_page()
    page.goto(live_server.url + "/tiny/1-mlp/3")
    boosts = page.locator("table.top-logits").bounding_box()
    suppresses = page.locator("table.bottom-logits").bounding_box()
    assert suppresses["y"] >= boosts["y"] + boosts["height"]  # one table under the other
    assert boosts["width"] > 300  # each as wide as the screen allows
    context.close()
