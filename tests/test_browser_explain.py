"""Headless Chromium: "what mattered" on a unit page (issue 18). The attribution arrives
after the page as a second tint row under the example, with the minimal example; the
URL (explain=SEQ:POS) brings it back on reload; the top examples' summary line too."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

UNIT = "/tiny/0-mlp/7"


def _api(live_server, path: str) -> dict:
    return json.load(urllib.request.urlopen(live_server.url + path))


def _check_attribution(page, item, expected: dict) -> None:
    row = item.locator(".why .why-row")
    row.wait_for()
    shown = [t.get_attribute("data-act") for t in row.locator(".t").all()]
    want = [None if v is None else f"{v:.4f}" for v in expected["delta"]]
    assert shown == want
    # Tinted: the strongest |delta| at full colour.
    strengths = [t.get_attribute("style") for t in row.locator(".t[data-act]").all()]
    assert any(s and "--a:1.000" in s for s in strengths)
    t = expected["truncation"]
    if t is None:
        assert "No suffix within the window keeps" in item.locator(".why .no-minimal").inner_text()
    else:
        minimal = item.locator(".why .minimal-example")
        assert minimal.locator(".n-minimal").inner_text() == str(len(t["token_ids"]))
        assert minimal.locator(".t").count() == len(t["token_ids"])


def test_what_mattered_tints_the_example_and_survives_reload(page, live_server):
    page.goto(live_server.url + UNIT)
    first = page.locator("li.example").first
    # The full sequence opened in place (app.js pushes open=): "what mattered" keeps it.
    first.locator("a.full-link").click()
    page.wait_for_url(re.compile(r"open="))
    first.locator("a.why-link").click()
    page.wait_for_url(re.compile(r"explain=\d+%3A\d+|explain=\d+:\d+"))
    assert "open=" in page.url
    key = page.evaluate("new URLSearchParams(location.search).get('explain')")
    seq, pos = map(int, key.split(":"))
    expected = _api(live_server, f"/api{UNIT}/explain?seq={seq}&pos={pos}")
    item = page.locator("li.example", has=page.locator(".why"))
    _check_attribution(page, item, expected)
    assert item.locator("a.why-link").inner_text() == "hide what mattered"
    page.reload()
    _check_attribution(page, page.locator("li.example", has=page.locator(".why")), expected)
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    assert page.errors == []


def test_minimal_summary_line_loads_on_request(page, live_server):
    page.goto(live_server.url + UNIT)
    assert page.locator("#minimal-summary").count() == 0  # not computed at page load
    page.locator("#minimal-link").click()
    line = page.locator("#minimal-summary")
    line.wait_for()
    expected = _api(live_server, f"/api{UNIT}/minimal")
    text = line.inner_text()
    if expected["n_found"]:
        assert f"≤ {expected['max_tokens']} token" in text
        assert f"for {expected['n_found']} of {expected['n_examples']} top examples" in text
    else:
        assert "No suffix within the window" in text
    assert "explain=top" in page.url


def test_a_band_tab_keeps_what_mattered_in_the_visitors_text(page, live_server):
    from urllib.parse import parse_qs, urlsplit

    page.goto(live_server.url + UNIT + "?text=def+f%28x%29%3A&explain=text")
    page.locator("#live-result .why .why-row").wait_for()
    page.locator("nav.tabs a.band-tab").first.click()
    page.wait_for_url(re.compile(r"band=\d+"))
    query = parse_qs(urlsplit(page.url).query)
    assert query["explain"] == ["text"] and query["text"] == ["def f(x):"]
    # Back to the top examples by their tab: still there, and the explanation too.
    page.locator("nav.tabs a.tab").first.click()
    page.wait_for_url(lambda url: "band=" not in url)
    assert parse_qs(urlsplit(page.url).query)["explain"] == ["text"]
    page.reload()
    page.locator("#live-result .why .why-row").wait_for()
    assert page.errors == []
