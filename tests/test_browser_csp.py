"""The Content-Security-Policy in a real browser: every kind of page loads and works
(htmx swaps, tabs, the Swagger UI) with no violation in the console, the browser does
enforce the policy, and only the embed view can be framed by another site."""

from __future__ import annotations

import re

import pytest

from fixtures_web import HandlerThread

pytestmark = [pytest.mark.browser]


def _watched(page) -> list[str]:
    """Console messages about the Content-Security-Policy, from now on."""
    seen: list[str] = []
    page.on("console", lambda msg: seen.append(msg.text) if "Content Security Policy" in msg.text else None)
    return seen


def _goto(page, url: str):
    resp = page.goto(url)
    assert resp is not None and resp.status == 200, url
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "style-src 'self';" in csp, url
    return resp


def test_pages_work_with_no_csp_violation(page, live_server):
    seen = _watched(page)
    base = live_server.url
    # A unit page: a band tab and the live text are htmx swaps.
    _goto(page, f"{base}/tiny/0-mlp/2")
    page.locator("nav.tabs a.band-tab").first.click()
    page.wait_for_url(re.compile(r"band=\d+"))
    assert page.locator("nav.tabs a.band-tab.active").count() == 1
    page.fill("#live-text", "def f(x): return x")
    page.click("#live-form button")
    page.locator("#live-result .live-tokens .t").first.wait_for()
    # The tints are style attributes: allowed, and applied.
    tinted = page.locator("#examples .t.focus").first
    assert tinted.evaluate("el => getComputedStyle(el).getPropertyValue('--a').trim()") not in ("", "0")
    # htmx's own indicator style is not injected (the CSP would refuse it); ours applies.
    assert page.evaluate("document.querySelectorAll('style').length") == 0
    # A source table: sorting is an htmx swap of the table.
    _goto(page, f"{base}/tiny/0-mlp")
    page.locator("table.units thead a").first.click()
    page.wait_for_url(re.compile(r"sort="))
    assert page.locator("table.units tbody tr").count() > 0
    # Search and try: a token of the try page is an htmx swap.
    _goto(page, f"{base}/tiny/search?token=def")
    assert page.locator("main").inner_text()
    _goto(page, f"{base}/tiny/try?text=def+f%28x%29")
    page.locator("#try-result a.t").nth(2).click()
    page.wait_for_url(re.compile(r"pos=2"))
    page.locator("#try-result .focus").first.wait_for()
    # The API docs: Swagger UI, set up from a static file, renders the routes.
    _goto(page, f"{base}/docs")
    page.locator("#swagger-ui .opblock").first.wait_for()
    assert page.locator("#swagger-ui .opblock").count() >= 8
    # The embed card.
    _goto(page, f"{base}/embed/tiny/0-mlp/2")
    assert page.locator(".embed-card li.example").count() > 0
    assert seen == []
    assert page.errors == []


def test_the_browser_enforces_the_policy(page, live_server):
    """An inline script put into a page does not run, and the browser says why."""
    seen = _watched(page)
    _goto(page, f"{live_server.url}/tiny/0-mlp/2")
    try:
        page.add_script_tag(content="window.injected = 1;")
    except Exception:  # Playwright reports the refused script as an error
        pass
    assert page.evaluate("window.injected") is None
    assert any("script-src 'self'" in text for text in seen), seen


class Blog(HandlerThread):
    """A page on another origin (its own port) that frames two URLs of the site."""

    def __init__(self, html: str):
        from http.server import BaseHTTPRequestHandler

        body = html.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):
                pass

        super().__init__(Handler)
        self.url += "/"


def test_only_the_embed_view_can_be_framed(page, live_server):
    """A blog on another origin frames the embed view; a unit page in its frame is refused."""
    base = live_server.url
    html = (
        "<!doctype html><title>blog</title>"
        f'<iframe id="card" src="{base}/embed/tiny/0-mlp/2" width="600" height="400"></iframe>'
        f'<iframe id="page" src="{base}/tiny/0-mlp/2" width="600" height="400"></iframe>'
    )
    refused = _watched(page)
    with Blog(html) as blog:
        page.goto(blog.url)
        card = page.frame_locator("#card")
        card.locator(".embed-card li.example").first.wait_for()
        assert card.locator("a.full-page").get_attribute("target") == "_blank"
        page.wait_for_function("() => window.frames.length === 2")
        page.wait_for_timeout(300)
        urls = [f.url for f in page.frames]
        assert f"{base}/embed/tiny/0-mlp/2" in urls
        assert f"{base}/tiny/0-mlp/2" not in urls  # the browser refused to load it
        assert page.frame_locator("#page").locator(".unit-head").count() == 0
    assert any("frame-ancestors 'none'" in text for text in refused), refused
