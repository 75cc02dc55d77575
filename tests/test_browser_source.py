"""End-to-end in headless Chromium: the source page's unit table (filters with and
without JavaScript, sort kept by a filter, Back/Forward) and phone widths."""

from __future__ import annotations

import json
import re
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

M, NEURONS, SAE = "tiny", "0-mlp", "1-res-sae"


def api(base: str, path: str) -> dict:
    return json.load(urllib.request.urlopen(base + "/api" + path))


def shown_units(pg) -> list[int]:
    return [int(t) for t in pg.locator("table.units a.unit-link").all_inner_texts()]


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


@pytest.fixture
def js_page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    failed: list[str] = []
    pg.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    pg.failed = failed
    yield pg
    context.close()


@pytest.fixture
def nojs_page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, java_script_enabled=False)
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()


def _filter(pg, min_pct: str, max_pct: str) -> None:
    pg.fill("form.filters input[name=min_pct]", min_pct)
    pg.fill("form.filters input[name=max_pct]", max_pct)
    pg.click("form.filters button")


@pytest.mark.parametrize("js", [True, False], ids=["js", "nojs"])
def test_filter_form_with_empty_fields(request, live_server, js):
    pg = request.getfixturevalue("js_page" if js else "nojs_page")
    base = live_server.url
    want = [u["index"] for u in api(base, f"/{M}/{NEURONS}?min_density=0.5&per_page=500&sort=max")["units"]]
    every = [u["index"] for u in api(base, f"/{M}/{NEURONS}?per_page=500&sort=max")["units"]]
    pg.goto(f"{base}/{M}/{NEURONS}?per_page=500")
    _filter(pg, "50", "")  # percent, the unit the density column shows; no upper bound
    pg.wait_for_url(re.compile(r"min_pct=50"))
    pg.wait_for_function(f"document.querySelectorAll('table.units a.unit-link').length === {len(want)}")
    assert shown_units(pg) == want
    assert pg.locator("#filter-error").is_hidden()
    _filter(pg, "", "")  # both empty: no bound at all
    pg.wait_for_url(re.compile(r"min_pct=&"))
    pg.wait_for_function(f"document.querySelectorAll('table.units a.unit-link').length === {len(every)}")
    assert shown_units(pg) == every
    if js:
        assert pg.failed == []  # no 422 anywhere, not even in the console


@pytest.mark.parametrize("js", [True, False], ids=["js", "nojs"])
def test_filter_error_is_shown_next_to_the_form(request, live_server, js):
    pg = request.getfixturevalue("js_page" if js else "nojs_page")
    pg.goto(f"{live_server.url}/{M}/{NEURONS}")
    before = shown_units(pg)
    _filter(pg, "60", "10")
    error = pg.locator("form.filters #filter-error")
    error.wait_for(state="visible")
    assert "above" in error.inner_text()
    # What was typed stays, and the table is still there.
    assert pg.input_value("form.filters input[name=min_pct]") == "60"
    assert pg.input_value("form.filters input[name=max_pct]") == "10"
    assert shown_units(pg) == before


def test_sort_then_filter_keeps_the_sort_and_back_restores_the_boxes(js_page, live_server):
    pg, base = js_page, live_server.url
    pg.goto(f"{base}/{M}/{NEURONS}?per_page=500")
    pg.click("table.units th a >> text=density")  # a header sort, swapped in by htmx
    pg.wait_for_url(re.compile(r"sort=density"))
    _filter(pg, "20", "80")
    pg.wait_for_url(re.compile(r"min_pct=20"))
    q = query_of(pg.url)
    assert q["sort"] == ["density"] and q["order"] == ["desc"] and q["max_pct"] == ["80"]
    want = [
        u["index"]
        for u in api(base, f"/{M}/{NEURONS}?sort=density&order=desc&min_density=0.2&max_density=0.8&per_page=500")[
            "units"
        ]
    ]
    pg.wait_for_function(f"document.querySelectorAll('table.units a.unit-link').length === {len(want)}")
    assert shown_units(pg) == want
    # Filter again, then Back: the boxes show the filter of the table shown.
    _filter(pg, "30", "")
    pg.wait_for_url(re.compile(r"min_pct=30"))
    pg.go_back()
    pg.wait_for_url(re.compile(r"min_pct=20"))
    pg.wait_for_function(f"document.querySelectorAll('table.units a.unit-link').length === {len(want)}")
    assert pg.input_value("input[name=min_pct]") == "20" and pg.input_value("input[name=max_pct]") == "80"
    assert shown_units(pg) == want
    pg.go_forward()
    pg.wait_for_url(re.compile(r"min_pct=30"))
    pg.wait_for_function("document.querySelector('input[name=min_pct]').value === '30'")
    assert pg.input_value("input[name=max_pct]") == ""
    # The copied URL reproduces the view.
    url = pg.url
    shown = shown_units(pg)
    pg.goto(url)
    assert shown_units(pg) == shown and pg.input_value("input[name=min_pct]") == "30"


def test_page_jump_and_go_to_unit(js_page, live_server):
    pg, base = js_page, live_server.url
    pg.goto(f"{base}/{M}/{SAE}?per_page=10&sort=unit&order=asc&hide_dead=false")
    pg.fill("form.page-jump input[name=page]", "3")
    pg.click("form.page-jump button")
    pg.wait_for_url(re.compile(r"page=3"))
    assert query_of(pg.url)["sort"] == ["unit"] and query_of(pg.url)["hide_dead"] == ["false"]
    pg.wait_for_function("document.querySelector('table.units a.unit-link').textContent === '20'")
    pg.fill("form.goto input[name=goto]", "500")
    pg.click("form.goto button")
    error = pg.locator("form.goto #unit-error")
    error.wait_for(state="visible")
    assert "no unit 500" in error.inner_text()
    pg.fill("form.goto input[name=goto]", "17")
    pg.click("form.goto button")
    pg.wait_for_url(re.compile(rf"/{M}/{SAE}/17$"))


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_sideways_scroll_at_390px(browser, live_server, scheme):
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme=scheme, device_scale_factor=1)
    pg = context.new_page()
    try:
        for path in ["/", f"/{M}", f"/{M}/{NEURONS}", f"/{M}/{SAE}", f"/{M}/{NEURONS}?min_pct=abc"]:
            pg.goto(live_server.url + path)
            width = pg.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (path, width)
            if "/" in path.strip("/"):
                # The top token of the first row is on screen.
                box = pg.locator("table.units tbody tr").first.locator(".col-top-token").bounding_box()
                assert box is not None and box["width"] > 0 and box["x"] + box["width"] <= 390, (path, box)
    finally:
        context.close()
