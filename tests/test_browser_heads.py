"""Headless Chromium on an attention head's unit page: where each example's focus token
attends, at 1280 and 390 px, light and dark; the sequence page it links to; live text."""

from __future__ import annotations

import re

import pytest
from contrast import contrast_of

from fixtures_web import ServerThread

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HEAD = "/tiny/1-attn-max-attn/0"


@pytest.fixture(scope="module")
def heads_server(tiny_heads_index):
    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    app = create_app(Settings(index_file=tiny_heads_index, preload_live=True, root_path=""))
    with ServerThread(app) as server:
        yield server


@pytest.fixture(scope="module")
def outside_url(heads_server) -> str:
    """The page of HEAD's example set where an example attends most before its window."""
    import json
    import urllib.request

    def get(url: str) -> dict:
        return json.load(urllib.request.urlopen(heads_server.url + "/api" + url))

    sets = [HEAD] + [f"{HEAD}?band={b['band']}" for b in reversed(get(HEAD)["bands"]) if b["count"]]
    for url in sets:
        d = get(url)
        shown = d["top"] if d["band"] == "top" else d["bands"][int(d["band"])]["examples"]
        if any(not ex["attention"]["strongest"]["in_window"] for ex in shown):
            return url
    raise AssertionError(f"no example of {HEAD} attends most before its window")


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [1280, 390])
def test_head_page_shows_where_the_focus_attends(browser, heads_server, outside_url, width, scheme):
    context = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    try:
        pg.goto(heads_server.url + HEAD)
        assert pg.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        assert pg.locator(".logits").count() == 0
        assert "max-attn: max over s in 1..d" in pg.locator(".source-description").inner_text()
        first = pg.locator("#examples li.example").first
        src = first.locator(".t.attn-src")
        if src.count():  # the strongest source in the window: outlined, dashed
            assert src.evaluate("el => getComputedStyle(el).outlineStyle") in ("dashed", "double")
            assert contrast_of(src) >= 4.5
        note = first.locator(".attn-note")
        assert re.search(r"attends most to .+ \(\d\.\d{3}, position \d+", note.inner_text())
        assert contrast_of(note) >= 4.5
        assert contrast_of(pg.locator(".attention-help")) >= 4.5
        # The most attended token (BOS aside) is the most tinted one of the window.
        spans = first.locator(".toks > .t:not(.bos)")
        acts = [float(a) for a in spans.evaluate_all("els => els.map(e => e.dataset.act)")]
        weight = float(note.locator(".attn-weight").inner_text())
        assert max(acts) == pytest.approx(weight, abs=1e-3) if src.count() else max(acts) <= weight + 1e-3
        # An example whose strongest source lies before the window links to its sequence.
        pg.goto(heads_server.url + outside_url)
        assert pg.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        links = pg.locator("a.attn-seq")
        assert links.count()
        assert contrast_of(links.first) >= 4.5
        pos = int(re.search(r"position (\d+), outside", links.first.locator("xpath=..").inner_text()).group(1))
        links.first.click()
        pg.wait_for_url(re.compile(r"/tiny/sequences/\d+\?"))
        marked = pg.locator(".toks > .t").evaluate_all(
            "els => els.map((e, i) => e.classList.contains('attn-src') ? i : -1).filter(i => i >= 0)"
        )
        assert marked == [pos]
        assert pg.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    finally:
        context.close()


def test_live_text_on_a_head_page(page, heads_server):
    page.goto(heads_server.url + "/tiny/1-attn-induction/2")
    page.fill("#live-text", "abc abc abc")
    page.click("#live-form button")
    page.wait_for_url(re.compile(r"text="))
    toks = page.locator("#live-result .live-tokens .t")
    toks.first.wait_for()
    acts = [float(a) for a in toks.evaluate_all("els => els.map(e => e.dataset.act)")]
    assert acts[1] == 0.0 and max(acts) > 0  # the first token is new; a repeated one attends back
