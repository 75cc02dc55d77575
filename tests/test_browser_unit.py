"""End-to-end in headless Chromium (Debian's, driven by Playwright): the unit page flows."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TEXT = "def wrap(text, width):\n    return text"


def _unit_index(url: str) -> int:
    return int(re.search(r"/(\d+)(?:\?|$)", url).group(1))


def test_home_to_source_to_unit(page, live_server):
    page.goto(live_server.url + "/")
    page.click("a.source-link >> text=0-mlp")
    page.wait_for_url(re.compile(r"/tiny/0-mlp$"))
    assert page.locator("table.units tbody tr").count() > 0
    page.locator("a.unit-link").first.click()
    page.wait_for_url(re.compile(r"/tiny/0-mlp/\d+$"))
    # Tinted tokens: the focus token of the top example is strongly coloured.
    focus = page.locator("#examples li.example").first.locator(".t.focus")
    assert focus.is_visible()
    bg = focus.evaluate("el => getComputedStyle(el).backgroundColor")
    assert bg not in ("rgba(0, 0, 0, 0)", "transparent"), bg
    plain = page.locator("#examples .t").last.evaluate("el => getComputedStyle(el).backgroundColor")
    assert plain != bg
    # Band tabs with their activation range and share.
    tabs = page.locator("nav.tabs a.tab")
    assert tabs.count() >= 2 and tabs.first.is_visible()
    assert "of all tokens" in tabs.nth(1).inner_text()


def test_hover_shows_token_and_activation(page, live_server):
    page.goto(live_server.url + "/tiny/1-mlp/3")
    tok = page.locator("#examples li.example").first.locator(".t.focus")
    act = tok.get_attribute("data-act")
    tok.hover()
    tip = page.locator("#tip")
    tip.wait_for(state="visible")
    assert act in tip.inner_text()
    assert tip.inner_text().startswith('"')  # the token, quoted
    assert re.search(r'" \(id \d+\)', tip.inner_text())  # and its id
    page.mouse.move(0, 0)
    other = page.locator("#examples li.example").nth(1).locator(".t.focus")
    other.hover()
    assert other.get_attribute("data-act") in tip.inner_text()


def test_band_tab_switches_examples_and_url(page, live_server):
    page.goto(live_server.url + "/tiny/0-mlp/2")
    band_tab = page.locator("nav.tabs a.band-tab").first
    label = band_tab.inner_text().split()[0]
    band_tab.click()
    page.wait_for_url(re.compile(r"band=\d+"))
    assert page.locator("nav.tabs a.active").inner_text().split()[0] == label
    # Reloading the URL gives the same view.
    url = page.url
    page.goto(url)
    assert page.locator("nav.tabs a.active").inner_text().split()[0] == label


def test_live_text_is_tinted_and_shareable(page, live_server, browser):
    page.goto(live_server.url + "/tiny/0-mlp/4")
    page.fill("#live-text", TEXT)
    page.click("#live-form button")
    page.wait_for_url(re.compile(r"text="))
    toks = page.locator("#live-result .live-tokens .t")
    toks.first.wait_for()
    n = toks.count()
    assert n > 5
    acts = [toks.nth(i).get_attribute("data-act") for i in range(n)]
    assert any(float(a) != 0 for a in acts)
    # Copy the URL into a new page (another browser context): same view.
    other = browser.new_context().new_page()
    other.goto(page.url)
    toks2 = other.locator("#live-result .live-tokens .t")
    assert [toks2.nth(i).get_attribute("data-act") for i in range(toks2.count())] == acts
    assert other.locator("#live-text").input_value() == TEXT
    other.context.close()


def test_typing_updates_live_result(page, live_server):
    page.goto(live_server.url + "/tiny/1-res-sae/1")
    page.locator("#live-text").press_sequentially("return the text", delay=20)
    page.locator("#live-result .live-tokens .t").first.wait_for()
    assert page.locator("#live-result .live-tokens .t").count() >= 3


def test_empty_live_text_shows_an_error(page, live_server):
    page.goto(live_server.url + "/tiny/0-mlp/4")
    page.fill("#live-text", "   ")
    page.click("#live-form button")
    err = page.locator("#live-result .live-error")
    err.wait_for()
    assert "empty" in err.inner_text().lower()


def test_keyboard_navigation(page, live_server):
    page.goto(live_server.url + "/tiny/1-mlp/5")
    assert "j" in page.locator(".shortcuts").text_content()
    page.keyboard.press("j")
    page.wait_for_url(re.compile(r"/tiny/1-mlp/6$"))
    page.keyboard.press("k")
    page.wait_for_url(re.compile(r"/tiny/1-mlp/5$"))
    page.keyboard.press("k")
    page.wait_for_url(re.compile(r"/tiny/1-mlp/4$"))
    with page.expect_navigation():
        page.keyboard.press("r")
    page.wait_for_load_state()
    assert re.search(r"/tiny/1-mlp/\d+$", page.url)
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "search-input"
    # Typing in a text box does not navigate.
    page.keyboard.type("jk")
    assert page.locator("#search-input").input_value() == "jk"


def test_show_full_sequence_inline(page, live_server):
    page.goto(live_server.url + "/tiny/0-mlp/1")
    first = page.locator("#examples li.example").first
    key = first.locator("a.full-link").get_attribute("data-open")
    first.locator("a.full-link").click()
    full = first.locator(".full .full-seq .t")
    full.first.wait_for()
    assert full.count() > first.locator(".toks").first.locator(".t").count()
    # The expanded example is in the URL; the same link collapses it again.
    page.wait_for_url(re.compile(r"/tiny/0-mlp/1\?open=" + key.replace(":", "(:|%3A)") + "$"))
    assert first.locator("a.full-link").inner_text() == "hide full sequence"
    first.locator("a.full-link").click()
    page.wait_for_url(re.compile(r"/tiny/0-mlp/1$"))
    assert first.locator(".full .t").count() == 0


def test_pages_work_without_javascript(browser, live_server):
    context = browser.new_context(java_script_enabled=False)
    pg = context.new_page()
    pg.goto(live_server.url + "/tiny/0-mlp/3")
    pg.fill("#live-text", TEXT)
    pg.click("#live-form button")
    pg.wait_for_url(re.compile(r"/tiny/0-mlp/3\?text="))
    assert pg.locator("#live-result .live-tokens .t").count() > 5
    pg.click("nav.tabs a.band-tab >> nth=0")
    pg.wait_for_url(re.compile(r"band=\d+"))
    assert "text=" in pg.url  # the live text is kept
    pg.goto(live_server.url + "/tiny/0-mlp?sort=density&order=asc")
    pg.click("table.units th a >> text=max")
    pg.wait_for_url(re.compile(r"sort=max"))
    context.close()


def _showcase_path(base: str) -> str:
    """A unit worth showing: the strongest unit of the second source (first if only one),
    with its top example's text in the live box."""
    import json
    import urllib.parse
    import urllib.request

    home = json.load(urllib.request.urlopen(base + "/api"))
    model = home["models"][0]
    source = model["sources"][min(1, len(model["sources"]) - 1)]["slug"]
    table = json.load(urllib.request.urlopen(f"{base}/api/{model['model']}/{source}?sort=max&order=desc&per_page=1"))
    index = table["units"][0]["index"]
    unit = json.load(urllib.request.urlopen(f"{base}/api/{model['model']}/{source}/{index}"))
    ex = unit["top"][0]
    text = "".join(ex["tokens"][1 if ex["start"] == 0 else 0 :]).strip() or "hello"
    return f"/{model['model']}/{source}/{index}?" + urllib.parse.urlencode({"text": text})


def _dead_path(base: str) -> str | None:
    """A dead SAE feature's page (a random one of the last source with dead units), if any."""
    import json
    import urllib.error
    import urllib.request

    model = json.load(urllib.request.urlopen(base + "/api"))["models"][0]
    for source in reversed(model["sources"]):
        try:
            urllib.request.urlopen(f"{base}/api/{model['model']}/{source['slug']}/random?dead=1")
        except urllib.error.HTTPError:
            continue
        unit = json.load(urllib.request.urlopen(f"{base}/api/{model['model']}/{source['slug']}/random?dead=1"))
        return f"/{model['model']}/{source['slug']}/{unit['index']}"
    return None


def test_screenshots_light_and_dark(browser, live_server, tmp_path):
    """Screenshots of a unit page in light and dark mode, at phone width, and of a dead
    feature's page.

    The README's are taken from the bundled demo index and kept in docs/screenshots:
      ACTSCOPE_DEMO_INDEX=demo.duckdb ACTSCOPE_SCREENSHOTS_DIR=docs/screenshots \
        .venv/bin/pytest tests/test_browser_unit.py -k screenshots
    """
    from actscope.app.server import create_app
    from actscope.app.settings import Settings
    from fixtures_web import ServerThread

    out = Path(os.environ.get("ACTSCOPE_SCREENSHOTS_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    demo = os.environ.get("ACTSCOPE_DEMO_INDEX")
    server = ServerThread(create_app(Settings(index_file=demo))) if demo else None
    base = server.__enter__().url if server else live_server.url
    try:
        path = _showcase_path(base)
        shots = {}
        for scheme in ("light", "dark"):
            context = browser.new_context(viewport={"width": 1280, "height": 1500}, color_scheme=scheme)
            pg = context.new_page()
            pg.goto(base + path)
            pg.locator("#examples .t").first.wait_for()
            pg.locator("#live-result .live-tokens .t").first.wait_for()
            png = pg.screenshot(path=str(out / f"unit-{scheme}.png"))
            bg = pg.evaluate("getComputedStyle(document.body).backgroundColor")
            shots[scheme] = (png, [int(x) for x in re.findall(r"\d+", bg)[:3]])
            context.close()
        context = browser.new_context(viewport={"width": 390, "height": 1400}, color_scheme="light")
        pg = context.new_page()
        pg.goto(base + path)
        pg.locator("#live-result .live-tokens .t").first.wait_for()
        phone = pg.screenshot(path=str(out / "unit-phone.png"))
        assert pg.evaluate("document.documentElement.scrollWidth") <= 390
        dead = _dead_path(base)
        if dead:
            pg.set_viewport_size({"width": 1280, "height": 800})
            pg.goto(base + dead)
            assert pg.locator(".dead-note").is_visible()
            pg.screenshot(path=str(out / "unit-dead.png"))
        context.close()
    finally:
        if server:
            server.__exit__(None, None, None)
    (light, light_bg), (dark, dark_bg) = shots["light"], shots["dark"]
    assert light[:8] == dark[:8] == phone[:8] == b"\x89PNG\r\n\x1a\n" and light != dark
    assert sum(light_bg) > 600 and sum(dark_bg) < 150  # the page follows the system theme


def test_try_page_click_a_token(page, live_server):
    page.goto(live_server.url + "/tiny/try")
    page.select_option("select[name=source]", "1-res-sae")
    page.fill("#try-form textarea", TEXT)
    page.click("#try-form button")
    toks = page.locator(".try-tokens a.t")
    toks.first.wait_for()
    toks.nth(3).click()
    page.wait_for_url(re.compile(r"pos=3"))
    units = page.locator(".token-units .try-source[data-source='1-res-sae'] a")
    units.first.wait_for()
    href = units.first.get_attribute("href")
    assert re.fullmatch(r"/tiny/1-res-sae/\d+\?text=def.*", href)
    units.first.click()
    page.wait_for_url(re.compile(r"/tiny/1-res-sae/\d+\?text=def"))
    assert page.locator("#examples").is_visible()
