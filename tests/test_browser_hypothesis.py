"""End-to-end in headless Chromium: a regex hypothesis from the unit page's box."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _figures(page) -> dict[str, str]:
    rows = page.locator("table.hyp-figures tbody tr")
    return {
        rows.nth(i).locator("th").inner_text(): rows.nth(i).locator("td").first.inner_text()
        for i in range(rows.count())
    }


def test_regex_box_gives_figures_and_examples_and_the_url_reproduces_them(page, live_server, browser):
    page.goto(live_server.url + "/tiny/0-mlp/5")
    page.fill("#hyp-regex", r"\bdef\b")
    page.fill("#hyp-sequences", "40")
    page.fill("#hyp-seed", "7")
    page.click("#hypothesis-form button")
    page.wait_for_url(re.compile(r"/tiny/0-mlp/5/hypothesis\?regex=%5Cbdef%5Cb&threshold=&sequences=40&seed=7$"))
    page.wait_for_selector("table.hyp-figures", timeout=60_000)  # progress first, then htmx swaps the result in
    api = httpx.get(
        live_server.url + "/api/tiny/0-mlp/5/hypothesis", params={"regex": r"\bdef\b", "sequences": 40, "seed": 7}
    ).json()
    shown = _figures(page)
    assert shown["tokens"] == f"{api['n_tokens']:,}" and shown["matched"] == f"{api['n_matched']:,}"
    assert shown["precision"] == (f"{api['precision'] * 100:.1f}%" if api["precision"] is not None else "\u2013")
    assert shown["recall"] == (f"{api['recall'] * 100:.1f}%" if api["recall"] is not None else "\u2013")
    # Disagreements as tinted examples, each linking to its sequence.
    fp = page.locator("ol.false-positives").first.locator("li.example")  # the random sample's
    assert fp.count() == len(api["false_positives"]) > 0
    assert fp.first.locator(".ex-act").inner_text() == f"{api['false_positives'][0]['act']:.3f}"
    assert fp.first.locator(".t.focus").count() == 1
    assert page.locator("ol.false-negatives").first.locator("li.example").count() == len(api["false_negatives"])
    top = page.locator("ol.false-positives").nth(1).locator("li.example")  # the top examples' sequences'
    assert top.count() == len(api["top_examples"]["false_positives"])

    # Another threshold, in place: htmx swaps the figures and pushes the URL.
    page.fill("#hyp-threshold", "-10")
    page.click("#hypothesis-form button")
    page.wait_for_url(re.compile(r"threshold=-10&"))
    expect(page.locator(".hyp-threshold")).to_have_text("-10.000", timeout=60_000)
    moved = _figures(page)
    assert moved["active"] != shown["active"]
    # The URL reproduces the view in a fresh browser.
    other = browser.new_context().new_page()
    other.goto(page.url)
    other.wait_for_selector("table.hyp-figures", timeout=60_000)
    assert _figures(other) == moved
    assert other.locator("#hyp-regex").input_value() == r"\bdef\b"
    assert other.locator("#hyp-threshold").input_value() == "-10"
    other.context.close()
    assert not page.errors


def test_bad_regex_is_shown_next_to_the_form(page, live_server):
    page.goto(live_server.url + "/tiny/0-mlp/5/hypothesis")
    page.fill("#hyp-regex", "(oops")
    page.click("#hypothesis-form button")
    error = page.locator("#hyp-regex-error")
    error.wait_for()
    assert "missing ), unterminated subpattern" in error.inner_text()
    assert page.locator("#hyp-regex").input_value() == "(oops"
