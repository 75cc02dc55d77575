"""End-to-end in headless Chromium: the site under /actscope behind a prefix-stripping
proxy (as `actscope serve --root-path /actscope` behind nginx), htmx swaps included."""

from __future__ import annotations

import re

import pytest

from fixtures_web import PREFIX

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TEXT = "def wrap(text, width):\n    return text"


@pytest.fixture
def site(prefixed_site):
    return prefixed_site.url + PREFIX


@pytest.fixture
def page(browser, prefixed_site):
    """A page that records every request leaving the prefix, failing or refused."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    pg.problems = []
    site = prefixed_site.url + PREFIX + "/"

    def on_request(req):
        if req.url.startswith(prefixed_site.url) and not req.url.startswith(site):
            pg.problems.append(("outside the prefix", req.url))

    pg.on("request", on_request)
    pg.on("requestfailed", lambda req: pg.problems.append(("failed", req.url, req.failure)))
    pg.on("response", lambda r: r.status >= 400 and pg.problems.append((r.status, r.url)))
    pg.on("pageerror", lambda exc: pg.problems.append(("page error", str(exc))))
    # Requests Playwright does not report (the browser's own /favicon.ico) show here.
    pg.on("console", lambda msg: msg.type == "error" and pg.problems.append(("console", msg.text)))
    yield pg
    context.close()


def test_browse_filter_and_unit_under_the_prefix(page, site, browser):
    page.goto(site + "/")
    page.click("a.source-link >> text=0-mlp")
    page.wait_for_url(re.compile(rf"{PREFIX}/tiny/0-mlp$"))
    # Filter (htmx swaps the table and pushes the URL), with the density boxes empty.
    page.fill("input[name=q]", "1")
    page.click("form.filters button")
    page.wait_for_url(re.compile(rf"{PREFIX}/tiny/0-mlp\?.*q=1"))
    assert "match" in page.locator("#units .count").inner_text()
    page.click("table.units th a >> text=density")
    page.wait_for_url(re.compile(rf"{PREFIX}/tiny/0-mlp\?sort=density"))
    page.locator("a.unit-link").first.click()
    page.wait_for_url(re.compile(rf"{PREFIX}/tiny/0-mlp/\d+$"))
    # A band tab (htmx), then the live text (htmx, URL pushed from HX-Push-Url).
    page.locator("nav.tabs a.band-tab").first.click()
    page.wait_for_url(re.compile(rf"{PREFIX}/tiny/0-mlp/\d+\?band=\d+$"))
    page.fill("#live-text", TEXT)
    page.click("#live-form button")
    page.wait_for_url(re.compile(rf"{PREFIX}/tiny/0-mlp/\d+\?.*text="))
    toks = page.locator("#live-result .live-tokens .t")
    toks.first.wait_for()
    acts = [toks.nth(i).get_attribute("data-act") for i in range(toks.count())]
    # "show full sequence" (htmx) and the keyboard.
    first = page.locator("#examples li.example").first
    first.locator("a.full-link").click()
    first.locator(".full .full-seq .t").first.wait_for()
    # The copied URL, reloaded elsewhere, shows the same live text.
    other = browser.new_context().new_page()
    other.goto(page.url)
    again = other.locator("#live-result .live-tokens .t")
    assert [again.nth(i).get_attribute("data-act") for i in range(again.count())] == acts
    other.context.close()
    with page.expect_navigation():
        page.keyboard.press("j")
    assert re.search(rf"{PREFIX}/tiny/0-mlp/\d+(\?text=[^&]*)?$", page.url)  # the next unit, same text
    assert page.problems == []


def test_try_and_search_under_the_prefix(page, site):
    page.goto(site + "/tiny/try")
    page.fill("#try-form textarea", TEXT)
    page.click("#try-form button")
    page.locator(".try-tokens a.t").nth(3).click()
    page.wait_for_url(re.compile(rf"{PREFIX}/tiny/try\?.*pos=3"))
    unit = page.locator(".token-units a").first
    assert re.fullmatch(rf"{PREFIX}/tiny/0-mlp/\d+\?text=def.*", unit.get_attribute("href"))
    unit.click()
    page.wait_for_url(re.compile(rf"{PREFIX}/tiny/0-mlp/\d+\?text=def"))
    page.keyboard.press("/")
    page.keyboard.type("the")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf"{PREFIX}/tiny/search\?token=the"))
    assert page.problems == []


def test_swagger_ui_tries_the_api_under_the_prefix(page, site):
    page.goto(site + "/")
    page.click("text=API docs")
    page.wait_for_url(re.compile(rf"{PREFIX}/docs$"))
    page.locator(".opblock-summary-path", has_text=re.compile(r"^/api$")).first.click()
    page.click("button.try-out__btn")
    with page.expect_response(re.compile(rf"{PREFIX}/api$")) as answer:
        page.click("button.execute")
    assert answer.value.status == 200
    assert page.problems == []
