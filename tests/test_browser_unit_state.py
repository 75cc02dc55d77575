"""Headless Chromium on the unit page: dead features, a shared URL that reproduces the
view, j/k over dead units, keyboard help, the histogram's labels; at 1280 and 390 px."""

from __future__ import annotations

import json
import re
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest

from fixtures_models import DEAD_FEATURES

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WIDTHS = [1280, 390]
SAE = "/tiny/1-res-sae"


@pytest.fixture(params=WIDTHS, ids=lambda w: f"{w}px")
def page(request, browser):
    context = browser.new_context(viewport={"width": request.param, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()


def _no_sideways_scroll(pg) -> None:
    assert pg.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_dead_feature_page(page, live_server):
    n_tokens = json.load(urllib.request.urlopen(live_server.url + "/api/tiny"))["n_tokens"]
    page.goto(f"{live_server.url}{SAE}/{DEAD_FEATURES[0]}")
    note = page.locator(".dead-note")
    assert note.is_visible() and f"Never fired on {n_tokens:,} tokens" in note.inner_text()
    assert page.locator(".hist").count() == 0 and page.locator("nav.tabs").count() == 0
    assert "e-09" not in page.locator("main").inner_text()
    logits = page.locator("details.logits")
    assert logits.is_visible() and not page.locator(".top-logits").is_visible()  # collapsed
    logits.locator("summary").click()
    assert page.locator(".top-logits").is_visible()
    _no_sideways_scroll(page)


def test_shared_url_reproduces_text_band_and_expanded_example(page, live_server, browser):
    text = "def wrap(text, width):\n    return text"
    page.goto(live_server.url + "/tiny/0-mlp/2")
    page.fill("#live-text", text)
    page.click("#live-form button")
    page.wait_for_url(re.compile(r"text="))
    page.locator("#live-result .live-tokens .t").first.wait_for()
    tab = page.locator("nav.tabs a.band-tab").nth(1)
    band = _query(tab.get_attribute("href"))["band"]
    tab.click()
    page.wait_for_url(re.compile(rf"band={band}"))
    assert _query(page.url)["text"] == text  # the band link kept the typed text
    link = page.locator("#examples li.example").nth(1).locator("a.full-link")
    key = link.get_attribute("data-open")
    link.click()
    page.wait_for_url(re.compile(r"open="))
    expanded = page.locator("#examples li.example").nth(1).locator(".full .full-seq .t")
    expanded.first.wait_for()
    n_full = expanded.count()
    assert _query(page.url) == {"band": band, "text": text, "open": key}
    # Typing more text keeps the band and the expanded example in the URL.
    page.fill("#live-text", text + " again")
    page.click("#live-form button")
    page.wait_for_url(re.compile(r"again"))
    assert _query(page.url) == {"band": band, "text": text + " again", "open": key}
    live_acts = page.locator("#live-result .live-tokens .t").evaluate_all("els => els.map(e => e.dataset.act)")
    # The URL, opened elsewhere (and without JavaScript), shows the same view.
    for js in (True, False):
        other = browser.new_context(java_script_enabled=js, viewport=page.viewport_size).new_page()
        other.goto(page.url)
        assert _query(other.locator("nav.tabs a.active").get_attribute("href"))["band"] == band
        assert other.locator("#live-text").input_value() == text + " again"
        got = other.locator("#live-result .live-tokens .t").evaluate_all("els => els.map(e => e.dataset.act)")
        assert got == live_acts
        item = other.locator("#examples li.example").nth(1)
        assert item.locator("a.full-link").get_attribute("aria-expanded") == "true"
        assert item.locator(".full .full-seq .t").count() == n_full
        _no_sideways_scroll(other)
        other.context.close()
    # The expanded example collapses again, and the URL forgets it.
    link.click()
    page.wait_for_url(lambda url: "open" not in _query(url))
    assert page.locator("#examples .full .t").count() == 0


def test_j_and_k_skip_dead_units(page, live_server):
    assert {4, 5} <= set(DEAD_FEATURES)
    page.goto(f"{live_server.url}{SAE}/3")
    page.keyboard.press("j")
    page.wait_for_url(re.compile(rf"{SAE}/6$"))
    page.keyboard.press("k")
    page.wait_for_url(re.compile(rf"{SAE}/3$"))
    # Shift+J / Shift+K step through every unit, dead ones included.
    page.keyboard.press("Shift+J")
    page.wait_for_url(re.compile(rf"{SAE}/4$"))
    assert page.locator(".dead-note").is_visible()
    page.keyboard.press("j")
    page.wait_for_url(re.compile(rf"{SAE}/6$"))
    page.keyboard.press("Shift+K")
    page.wait_for_url(re.compile(rf"{SAE}/5$"))
    page.keyboard.press("k")
    page.wait_for_url(re.compile(rf"{SAE}/3$"))


def test_question_mark_opens_the_keys_and_g_jumps(page, live_server):
    page.goto(f"{live_server.url}{SAE}/3")
    keys = page.locator("#keys .shortcuts")
    assert not keys.is_visible()
    page.keyboard.press("?")
    assert keys.is_visible()
    listed = keys.inner_text()
    for key in ("j", "k", "J", "K", "r", "g", "/", "?"):
        assert re.search(rf"(^|\s){re.escape(key)}(\s|$)", listed), key
    page.keyboard.press("Escape")
    assert not keys.is_visible()
    page.keyboard.press("g")
    assert page.evaluate("document.activeElement.id") == "goto"
    page.keyboard.type("999")
    page.keyboard.press("Enter")
    err = page.locator("form.jump .jump-error")
    err.wait_for()
    assert "from 0 to 127" in err.inner_text() and page.locator("#goto").input_value() == "999"
    page.fill("#goto", "17")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf"{SAE}/17$"))
    _no_sideways_scroll(page)


def _crowded_units(base: str, n: int) -> list[str]:
    """The units whose band edges lie closest together on their histogram's axis."""
    found = []
    for source in ("0-mlp", "1-mlp", "1-res-sae"):
        for unit in range(0, 64, 3):
            d = json.load(urllib.request.urlopen(f"{base}/api/tiny/{source}/{unit}"))
            edges = d["stats"]["histogram"]["edges"]
            span = (edges[-1] - edges[0]) or 1.0
            xs = sorted(b["lo"] for b in d["bands"] if b["count"] > 0 and edges[0] < b["lo"] < edges[-1])
            gaps = [(b - a) / span for a, b in zip(xs, xs[1:])] or [1.0]
            found.append((min(gaps), f"/tiny/{source}/{unit}"))
    return [path for _, path in sorted(found)[:n]]


def _overlaps(boxes) -> list:
    bad = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            across = a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            if across and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]:
                bad.append((a, b))
    return bad


def test_histogram_labels_do_not_overlap(page, live_server):
    boxes_js = "els => els.map(e => { const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height, text: e.textContent}; })"
    for path in _crowded_units(live_server.url, 5):
        page.goto(live_server.url + path)
        svg = page.locator(".hist svg").bounding_box()
        labels = page.locator(".hist svg text").evaluate_all(boxes_js)
        assert sum(1 for b in labels if b["text"].startswith("B")) >= 3, path
        assert _overlaps(labels) == [], path
        # Band labels stand above the bars, never on them.
        bars_top = min(b["y"] for b in page.locator(".hist svg rect.bar").evaluate_all(boxes_js))
        assert all(b["y"] + b["height"] <= bars_top + 0.5 for b in labels if b["text"].startswith("B")), path
        for b in labels:  # inside the drawing
            assert svg["x"] - 0.5 <= b["x"] and b["x"] + b["width"] <= svg["x"] + svg["width"] + 0.5, (path, b)
        _no_sideways_scroll(page)
