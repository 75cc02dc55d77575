"""Headless Chromium on the compare view, over the SoLU model: from a neuron's page to
its three hooks side by side, the URL keeping the units, a bad unit shown next to the
form with the text kept; no sideways scroll at 1280 and 390 px, AA contrast in light
and dark."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from contrast import contrast_of

from fixtures_web import ServerThread

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SOLU = "solu-tiny"
HOOKS_OF_5 = "1-mlp-pre/5,1-mlp-mid/5,1-mlp/5"


@pytest.fixture(scope="module")
def solu_server(solu_served_index):
    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    app = create_app(Settings(index_file=solu_served_index, live=False, root_path=""))
    with ServerThread(app) as server:
        yield server


@pytest.fixture(params=[(1280, "light"), (390, "dark")], ids=lambda p: f"{p[0]}px-{p[1]}")
def page(request, browser):
    width, scheme = request.param
    context = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    pg.errors = []
    pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
    yield pg
    context.close()


def _no_sideways_scroll(pg) -> None:
    width = pg.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width[0] <= width[1], width


def _readable(locator) -> None:
    assert contrast_of(locator) >= 4.5, locator


def test_from_a_neuron_to_its_hooks_side_by_side(page, solu_server):
    page.goto(f"{solu_server.url}/{SOLU}/1-mlp-mid/5")
    _no_sideways_scroll(page)
    _readable(page.locator(".other-hooks a.other-hook").first)
    page.click("#compare-hooks")
    page.wait_for_url(re.compile(r"/compare\?"))
    assert parse_qs(urlsplit(page.url).query)["units"] == [HOOKS_OF_5]
    columns = page.locator(".compare-unit")
    assert columns.count() == 3
    assert [columns.nth(i).get_attribute("data-ref") for i in range(3)] == HOOKS_OF_5.split(",")
    boxes = [columns.nth(i).bounding_box() for i in range(3)]
    width = page.viewport_size["width"]
    if width >= 1280:  # side by side: one row
        assert len({round(b["y"]) for b in boxes}) == 1
    else:  # a phone: one column under the other
        assert boxes[0]["y"] < boxes[1]["y"] < boxes[2]["y"]
    assert all(b["x"] >= 0 and b["x"] + b["width"] <= width for b in boxes)
    assert page.locator(".compare-unit .hist svg").count() == 3
    _no_sideways_scroll(page)
    shared = page.locator("li.example.shared .shared-with")
    assert shared.count() > 0
    _readable(shared.first)
    _readable(page.locator(".overlap .n-shared").first)
    assert page.errors == []


def test_a_bad_unit_is_shown_next_to_the_form_with_the_text_kept(page, solu_server):
    page.goto(f"{solu_server.url}/{SOLU}/compare?units={HOOKS_OF_5}")
    typed = "1-mlp/5, 1-mlp/x"
    page.fill("#units", typed)
    page.click(".compare-form button")
    page.wait_for_url(re.compile(r"units=1-mlp%2F5"))
    error = page.locator("#units-error")
    assert "'1-mlp/x' is not a unit" in error.inner_text()
    assert page.input_value("#units") == typed
    assert page.locator(".compare-unit").count() == 0
    _readable(error)
    _no_sideways_scroll(page)
    # Fixed in place, the units compare again.
    page.fill("#units", "1-mlp/5,0-mlp/5")
    page.click(".compare-form button")
    page.locator(".compare-unit").nth(1).wait_for()
    assert page.locator("#units-error").count() == 0
