"""How tokens look in headless Chromium: bytes, characters across tokens, contrast of
tinted tokens in both colour schemes, a newline focus token, and no token tab stops."""

from __future__ import annotations

import re

import pytest
from contrast import contrast_of

pytestmark = [pytest.mark.browser, pytest.mark.slow]

M = "tiny"
TEXT = "café naïve 日本"


def _ids(titles: list[str]) -> list[int]:
    return [int(re.search(r"\(id (\d+)\)", t).group(1)) for t in titles]


def test_live_text_draws_characters_across_byte_tokens(page, live_server):
    import json
    import urllib.parse
    import urllib.request

    page.goto(f"{live_server.url}/{M}/0-mlp/3?text={urllib.parse.quote(TEXT)}")
    live = page.locator("#live-result .live-tokens")
    live.wait_for()
    body = json.dumps({"text": TEXT, "source": "0-mlp", "index": 3}).encode()
    req = urllib.request.Request(
        f"{live_server.url}/api/{M}/activations", data=body, headers={"Content-Type": "application/json"}
    )
    data = json.load(urllib.request.urlopen(req))
    # The text reads as typed: no U+FFFD, every character where it belongs.
    shown = live.inner_text()
    assert "\ufffd" not in shown
    assert TEXT in shown
    # Every token keeps its own span (tint, title with its id, activation), in order.
    toks = live.locator(".t")
    titles = [toks.nth(i).get_attribute("title") for i in range(toks.count())]
    assert _ids(titles) == data["token_ids"]
    assert [float(toks.nth(i).get_attribute("data-act")) for i in range(toks.count())] == pytest.approx(
        data["acts"], abs=1e-4
    )
    # The byte tokens of "é" lie side by side under the one character, both visible.
    group = live.locator(".chars").first
    assert group.locator(".chars-text").inner_text() == "é"
    text_box = group.locator(".chars-text").bounding_box()
    cells = [group.locator(".t").nth(i).bounding_box() for i in range(group.locator(".t").count())]
    assert len(cells) == 2 and all(c["width"] > 2 for c in cells)
    assert cells[0]["x"] + cells[0]["width"] == pytest.approx(cells[1]["x"], abs=0.5)
    assert cells[0]["x"] == pytest.approx(text_box["x"], abs=1)
    assert cells[1]["x"] + cells[1]["width"] == pytest.approx(text_box["x"] + text_box["width"], abs=1)
    # Hovering a byte token names its bytes and its id.
    first = group.locator(".t").first
    first.hover()
    tip = page.locator("#tip")
    tip.wait_for(state="visible")
    assert tip.inner_text().startswith('"<0xC3>" (id ') and ' in "é"' in tip.inner_text()


def test_logit_table_shows_byte_tokens(page, live_server):
    import json
    import urllib.request

    for index in range(64):
        unit = json.load(urllib.request.urlopen(f"{live_server.url}/api/{M}/1-mlp/{index}"))
        rows = unit["logits"]["top"] + unit["logits"]["bottom"]
        if any(lg["token_bytes"] for lg in rows):
            break
    page.goto(f"{live_server.url}/{M}/1-mlp/{index}")
    cells = page.locator(".logit-table code.tok")
    shown = [cells.nth(i).inner_text() for i in range(cells.count())]
    assert len(shown) == len(rows)
    assert not [s for s in shown if "\ufffd" in s]
    assert [int(cells.nth(i).get_attribute("title").removeprefix("id ")) for i in range(len(rows))] == [
        lg["token_id"] for lg in rows
    ]
    for text, lg in zip(shown, rows):
        if lg["token_bytes"]:
            assert re.search(r"<0x[0-9A-F]{2}>", text), text
    # Rows that decode alike ("\ufffd" in the JSON) are told apart on the page.
    same = [s for s, lg in zip(shown, rows) if lg["token"] == "\ufffd"]
    assert len(set(same)) == len(same)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_tinted_tokens_keep_aa_contrast(browser, live_server, scheme):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, color_scheme=scheme)
    page = context.new_page()
    try:
        page.goto(f"{live_server.url}/{M}/1-mlp/3?text={TEXT}")
        page.locator("#live-result .live-tokens .t").first.wait_for()
        focus = page.locator("#examples li.example").first.locator(".t.focus")
        # The strongest token of the page: the highest tint, positive and negative.
        strongest = page.evaluate(
            """() => { const all = [...document.querySelectorAll('#examples .t, .live-tokens .t')];
                 const a = e => parseFloat(e.style.getPropertyValue('--a') || '0');
                 const pick = cls => all.filter(e => e.classList.contains('neg') === cls)
                   .sort((x, y) => a(y) - a(x))[0];
                 return [pick(false), pick(true)].filter(Boolean).map(e => e.getAttribute('title')); }"""
        )
        assert strongest
        found = {"focus": contrast_of(focus)}
        for title in strongest:
            loc = page.locator(f".t[title={_css_string(title)}]").first
            found[title] = contrast_of(loc)
        # The legend's full-strength tints, positive and negative.
        for i, loc in enumerate(page.locator(".legend .t").all()):
            found[f"legend {i}"] = contrast_of(loc)
        low = {k: round(v, 2) for k, v in found.items() if v < 4.5}
        assert not low, f"{scheme}: below 4.5:1: {low}"
        assert focus.evaluate("el => getComputedStyle(el).getPropertyValue('--a')").strip() == "1.000"
    finally:
        context.close()


def _css_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_focus_token_with_a_newline_is_one_box(page, live_server):
    import json
    import urllib.request

    for n in range(50):  # the first sequence with a newline token past BOS
        seq = json.load(urllib.request.urlopen(f"{live_server.url}/api/{M}/sequences/{n}"))
        pos = next((i for i, t in enumerate(seq["tokens"]) if i > 0 and "\n" in t), None)
        if pos is not None:
            break
    for url in [
        f"{live_server.url}/{M}/sequences/{n}?pos={pos}",
        f"{live_server.url}/{M}/sequences/{n}?source=0-mlp&index=1&pos={pos}",
    ]:
        page.goto(url)
        focus = page.locator(".full-seq .t.focus")
        assert focus.count() == 1
        assert focus.evaluate("el => el.getClientRects().length") == 1
        assert _ids([focus.get_attribute("title")]) == [seq["token_ids"][pos]]
        assert focus.inner_text().endswith("\u21b5")


def test_tokens_are_not_tab_stops(page, live_server):
    page.goto(f"{live_server.url}/{M}/1-mlp/3?text={TEXT}")
    page.locator("#live-result .live-tokens .t").first.wait_for()
    n_tokens = page.locator(".t").count()
    assert n_tokens > 50
    stops = page.evaluate(
        """() => [...document.querySelectorAll('*')].filter(e => e.tabIndex >= 0 && !e.disabled
             && e.getClientRects().length).map(e => e.className)"""
    )
    assert not [c for c in stops if re.search(r"\bt\b", str(c))]
    # Only links, form controls and disclosure summaries take focus: no token, span or div.
    kinds = page.evaluate(
        """() => [...document.querySelectorAll('*')].filter(e => e.tabIndex >= 0 && !e.disabled
             && e.getClientRects().length).map(e => e.tagName)"""
    )
    assert len(kinds) == len(stops) > 0
    assert set(kinds) <= {"A", "INPUT", "TEXTAREA", "SELECT", "BUTTON", "SUMMARY"}, set(kinds)
    # Tabbing from the text box reaches the examples' links without stopping on tokens.
    page.focus("#live-text")
    for _ in range(3):
        page.keyboard.press("Tab")
        assert "t" not in page.evaluate("() => document.activeElement.classList.value").split()
