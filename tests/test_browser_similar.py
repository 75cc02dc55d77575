"""Headless Chromium on a unit's neighbours: the panel loads on the unit page, a
neighbour's compare link opens the compare view with the pair's correlation, and that
URL alone reproduces it; no sideways scroll at 390 px, AA contrast light and dark."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from contrast import contrast_of

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(params=[(1280, "light"), (390, "dark")], ids=lambda p: f"{p[0]}px-{p[1]}")
def context(request, browser):
    width, scheme = request.param
    ctx = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
    yield ctx
    ctx.close()


def _no_sideways_scroll(pg) -> None:
    assert pg.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


def test_the_compare_view_opens_from_a_neighbour_and_its_url_reproduces_it(context, live_server):
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/tiny/1-mlp/3")
    first = page.locator("#neighbours .similar-table tbody tr").first
    first.wait_for()  # swapped in by htmx after the page loaded
    neighbour = first.locator("a.neighbour").inner_text()
    r = first.locator(".r").inner_text()
    assert contrast_of(first.locator("a.neighbour")) >= 4.5 and contrast_of(first.locator(".r")) >= 4.5
    _no_sideways_scroll(page)
    first.locator("a.compare-link").click()
    page.wait_for_url(re.compile(r"/tiny/compare\?"))
    assert parse_qs(urlsplit(page.url).query)["units"] == [f"1-mlp/3,{neighbour}"]
    assert [page.locator(".compare-unit").nth(i).get_attribute("data-ref") for i in range(2)] == ["1-mlp/3", neighbour]
    shown = page.locator(".correlations .correlation .r").inner_text()
    assert shown == f"r = {r}"
    _no_sideways_scroll(page)
    again = context.new_page()  # the URL alone, in a fresh page
    again.goto(page.url)
    assert again.locator(".correlations .correlation .r").inner_text() == shown
    assert [again.locator(".compare-unit").nth(i).get_attribute("data-ref") for i in range(2)] == ["1-mlp/3", neighbour]


def test_a_number_box_shows_what_the_visitor_typed_next_to_its_error(context, live_server):
    """A number the server refused stays in its box as typed (a type=number box would
    show it empty), beside the error."""
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/tiny/1-mlp/3/similar?scope=source&k=abc")
    assert page.input_value("#k") == "abc"
    assert "whole number" in page.locator("#similar-error").inner_text()
    page.goto(f"{live_server.url}/tiny/1-mlp/3?goto=x")
    assert page.input_value("#goto") == "x"
    assert "from 0 to" in page.locator("form.jump .jump-error").inner_text()
    _no_sideways_scroll(page)
