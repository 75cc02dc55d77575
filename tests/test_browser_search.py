"""End-to-end in headless Chromium: token search from the header's box, with and without
a leading space; the try page's per-token labels; unit links that keep the visitor's text."""

from __future__ import annotations

import re

import duckdb
import pytest
from search_reference import expected_hits, spaced_word

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TEXT = "def wrap(text, width):\n    return text"


@pytest.fixture(scope="module")
def word_hits(web_index):
    con = duckdb.connect(str(web_index), read_only=True)
    word = spaced_word(con)
    hits = expected_hits(con, word)
    con.close()
    return word, hits


def _links(page, selector: str) -> list[str]:
    links = page.locator(selector)
    return [links.nth(i).inner_text() for i in range(links.count())]


@pytest.mark.parametrize("space", ["", " "])
def test_token_search_from_the_header_box(page, live_server, word_hits, space):
    word, hits = word_hits
    page.goto(live_server.url + "/tiny/1-mlp/3")
    page.keyboard.press("/")
    page.keyboard.type(space + word)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/tiny/search\?token="))
    assert page.locator("#search-input").input_value() == space + word
    assert page.locator(".token-hits .count").inner_text().startswith(f"{len(hits)} units match")
    assert _links(page, ".search-hits a.unit-link") == [f"{s}/{u}" for s, u, _, _ in hits[:20]]
    # The matched spelling of each result, and its snippet with the focus marked.
    first = page.locator(".search-hits tbody tr").first
    assert first.locator(".snippet .t.focus").count() == 1
    if len(hits) > 20:
        page.click(".pager a[rel=next]")
        page.wait_for_url(re.compile(r"page=2"))
        assert _links(page, ".search-hits a.unit-link") == [f"{s}/{u}" for s, u, _, _ in hits[20:40]]
    assert page.errors == []


def test_try_page_labels_every_token_with_each_source_s_top_unit(page, live_server):
    page.goto(live_server.url + "/tiny/try")
    page.fill("#try-form textarea", TEXT)
    page.fill("#try-form input[name=k]", "3")
    page.click("#try-form button")
    page.wait_for_url(re.compile(r"/tiny/try\?.*text=def"))
    assert "k=3" in page.url
    expected = page.request.get(live_server.url + "/api/tiny/try", params={"text": TEXT, "k": 3}).json()
    tok = page.locator(".try-tokens a.t").nth(3)
    tok.hover()
    tip = page.locator("#tip")
    tip.wait_for(state="visible")
    for block in expected["sources"]:
        top = block["top"][3][0]
        assert f"{block['source']}/{top['index']}" in tip.inner_text()
    tok.click()
    page.wait_for_url(re.compile(r"pos=3"))
    assert "k=3" in page.url and "text=def" in page.url
    for block in expected["sources"]:
        shown = _links(page, f".token-units .try-source[data-source='{block['source']}'] a.unit-link")
        assert shown == [f"{block['source']}/{u['index']}" for u in block["top"][3]]
    # A unit link keeps the text: the unit page shows the unit's activations on it.
    link = page.locator(".token-units a.unit-link").first
    assert "text=def" in link.get_attribute("href")
    link.click()
    page.wait_for_url(re.compile(r"/tiny/0-mlp/\d+\?text=def"))
    assert page.locator("#live-text").input_value() == TEXT
    assert page.locator("#live-result .live-tokens .t").count() > 5
    assert page.errors == []


def test_text_search_keeps_the_text_in_its_box_and_in_unit_links(page, live_server):
    page.goto(live_server.url + "/tiny/search")
    page.fill("textarea[name=text]", TEXT)
    page.select_option("select[name=text_source]", "1-mlp")
    page.click("text=Rank units")
    page.wait_for_url(re.compile(r"text_source=1-mlp"))
    assert page.locator("textarea[name=text]").input_value() == TEXT
    assert page.locator("select[name=source]").input_value() == ""  # the token form's own state
    link = page.locator(".text-hits a.unit-link").first
    href = link.get_attribute("href")
    assert re.match(r"/tiny/1-mlp/\d+\?text=def", href) and "%0D" not in href
    link.click()
    page.wait_for_url(re.compile(r"/tiny/1-mlp/\d+\?text="))
    assert page.locator("#live-text").input_value() == TEXT
    assert page.errors == []
