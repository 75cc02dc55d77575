"""The explain and minimal pages, the unit page's explain state, and the try page's
"what mattered" links (issue 18, after a browser walk): errors said the same on the page
and the API, next to the field they are about; links that keep the state that still
applies; wording that agrees with the figures it states."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from bs4 import BeautifulSoup

M = "tiny"
UNIT = f"/{M}/0-mlp/7"
WINDOW = (6, 3)  # TINY_INDEX_OPTIONS["window"]


def _soup(r) -> BeautifulSoup:
    return BeautifulSoup(r.text, "html.parser")


def _query(href: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(href).query)


# -- nothing (or two things) to explain: one status and one message, page and API ---------
@pytest.mark.parametrize(
    "params,field,words",
    [
        ({}, "seq", ("seq", "pos", "text")),
        ({"seq": "0"}, "pos", ("pos is missing", "seq", "text")),
        ({"pos": "3"}, "seq", ("seq is missing", "pos", "text")),
        ({"seq": "0", "pos": "3", "text": "abc"}, "text", ("not both", "seq", "text")),
        # The form sends every box, the empty ones as `name=`.
        ({"seq": "", "pos": "", "text": "", "method": "replace", "threshold": ""}, "seq", ("seq", "pos", "text")),
    ],
)
def test_what_to_explain_is_a_422_on_the_page_and_the_api(client, params, field, words):
    api = client.get(f"/api{UNIT}/explain", params=params)
    page = client.get(f"{UNIT}/explain", params=params)
    assert api.status_code == page.status_code == 422
    message = api.json()["error"]["message"]
    assert all(w in message for w in words), message
    soup = _soup(page)
    shown = soup.select_one("#explain-error")
    assert shown is not None and shown.get_text() == message
    # The box it is about is marked invalid and described by the message; no other is.
    box = soup.select_one(f"#ex-{field}")
    assert box["aria-invalid"] == "true" and box["aria-describedby"] == "explain-error"
    assert [el.get("id") for el in soup.select("[aria-invalid]")] == [f"ex-{field}"]
    # What was typed is kept.
    for name, value in params.items():
        if name in ("seq", "pos"):
            assert soup.select_one(f"#ex-{name}")["value"] == value
        if name == "text":
            assert soup.select_one("#ex-text").get_text() == value


def test_a_bad_field_of_the_explain_form_is_marked(client):
    page = client.get(f"{UNIT}/explain", params={"seq": "0", "pos": "3", "draws": "many", "method": "noise"})
    assert page.status_code == 422
    soup = _soup(page)
    assert soup.select_one("#explain-error").get_text() == "draws must be a whole number, 0 or more, not 'many'."
    assert soup.select_one("#ex-draws")["aria-invalid"] == "true"
    assert soup.select_one("#ex-seq").get("aria-invalid") is None


def test_the_minimal_forms_threshold_error_is_marked(client):
    api = client.get(f"/api{UNIT}/minimal", params={"threshold": "lots"})
    page = client.get(f"{UNIT}/minimal", params={"threshold": "lots"})
    assert api.status_code == page.status_code == 422
    soup = _soup(page)
    assert soup.select_one("#minimal-error").get_text() == api.json()["error"]["message"]
    box = soup.select_one("#min-threshold")
    assert box["aria-invalid"] == "true" and box["aria-describedby"] == "minimal-error" and box["value"] == "lots"


# -- the unit page's explain state ---------------------------------------------------------
def _tabs(soup) -> list[dict[str, list[str]]]:
    return [_query(a["href"]) | {"_name": [a.select_one(".tab-name").get_text()]} for a in soup.select("nav.tabs a")]


def test_band_tabs_keep_the_explanation_that_still_applies(client):
    # The visitor's text's explanation applies to every set: every tab keeps it.
    soup = _soup(client.get(UNIT, params={"text": "def f(x):", "explain": "text"}))
    tabs = _tabs(soup)
    assert len(tabs) > 2
    for tab in tabs:
        assert tab["explain"] == ["text"] and tab["text"] == ["def f(x):"], tab
    # The top examples' summary applies to the top set only.
    soup = _soup(client.get(UNIT, params={"explain": "top"}))
    tabs = _tabs(soup)
    assert tabs[0]["_name"][0].startswith("Top") and tabs[0]["explain"] == ["top"]
    assert all("explain" not in tab for tab in tabs[1:])
    # One example's explanation: it may not be in another set.
    key = soup.select_one("li.example a.full-link")["data-open"]
    soup = _soup(client.get(UNIT, params={"explain": key}))
    assert all("explain" not in tab for tab in _tabs(soup))


@pytest.mark.parametrize(
    "params,kept",
    [
        ({"explain": "top"}, "top"),
        ({"explain": "text", "text": "abc"}, "text"),
        ({"explain": "text:2", "text": "abc"}, "text:2"),
    ],
)
def test_pages_of_a_set_keep_the_explanation(client, params, kept):
    soup = _soup(client.get(UNIT, params={"per_page": "3", **params}))
    more = soup.select_one(".ex-pager a.more")
    assert more is not None
    assert _query(more["href"])["explain"] == [kept]


def test_a_page_of_a_set_drops_one_examples_explanation(client):
    soup = _soup(client.get(UNIT, params={"per_page": "3"}))
    key = soup.select_one("li.example a.full-link")["data-open"]
    soup = _soup(client.get(UNIT, params={"per_page": "3", "explain": key}))
    assert "explain" not in _query(soup.select_one(".ex-pager a.more")["href"])


def test_an_unknown_explain_value_is_shown_by_the_examples(client):
    r = client.get(UNIT, params={"explain": "everything", "per_page": "3"})
    assert r.status_code == 422
    soup = _soup(r)
    error = soup.select_one("#examples #explain-state-error")
    assert error is not None and "explain must be SEQ:POS" in error.get_text() and "'everything'" in error.get_text()
    # The page is all there, its links without the value it cannot read.
    assert len(soup.select("li.example")) == 3
    assert "everything" not in " ".join(a["href"] for a in soup.select("#examples a[href], nav.tabs a[href]"))


@pytest.mark.parametrize(
    "params,where,words",
    [
        ({"explain": "text"}, "#live-result", "type one in the box above"),
        ({"explain": "top", "band": "BAND"}, "#examples", "shows with the Top examples"),
        ({"explain": "100000:3"}, "#examples", "is not among the examples shown here"),
    ],
)
def test_an_explanation_the_page_cannot_show_says_why(client, params, where, words):
    data = client.get(f"/api{UNIT}").json()
    band = str(next(b["band"] for b in data["bands"] if b["count"]))
    params = {k: band if v == "BAND" else v for k, v in params.items()}
    r = client.get(UNIT, params=params)
    assert r.status_code == 200
    note = _soup(r).select_one(f"{where} .explain-note")
    assert note is not None and words in note.get_text(), r.text[:300]
    assert f"explain={params['explain']}" in note.get_text()


# -- minimal examples -----------------------------------------------------------------------
def test_an_example_without_a_minimal_example_shows_its_window(client, db):
    # Keeping all (threshold 1) of an activation is rare once BOS is moved in: most
    # top examples have no minimal example then.
    api = client.get(f"/api{UNIT}/minimal", params={"threshold": "1"}).json()
    page = _soup(client.get(f"{UNIT}/minimal", params={"threshold": "1"}))
    items = page.select("ol.minimal-list li.example")
    assert len(items) == len(api["examples"])
    missing = [(ex, li) for ex, li in zip(api["examples"], items) if ex["truncation"] is None]
    assert missing, "every example kept all of its activation: no window to show"
    for ex, li in missing:
        (ids,) = db.execute("SELECT token_ids FROM sequences WHERE seq = ?", [ex["seq"]]).fetchone()
        start = max(0, ex["pos"] - WINDOW[0])
        assert ex["start"] == start and ex["focus"] == ex["pos"] - start
        assert ex["token_ids"] == list(ids)[start : ex["pos"] + WINDOW[1] + 1]
        # The window, its focus outlined, and what was looked for, plainly.
        assert len(li.select(".toks .t")) == len(ex["token_ids"])
        assert li.select(".toks .t")[ex["focus"]].get("class") == ["t", "focus"]
        said = li.select_one(".no-minimal").get_text(" ")
        assert f"positions {max(1, start)} to {ex['pos']}" in said and "100%" in said


def test_counts_of_one_are_singular(client):
    # A low threshold: the focus token alone keeps that much of most activations.
    api = client.get(f"/api{UNIT}/minimal", params={"threshold": "0.01"}).json()
    ones = [ex for ex in api["examples"] if ex["truncation"] and len(ex["truncation"]["token_ids"]) == 1]
    assert ones
    text = _soup(client.get(f"{UNIT}/minimal", params={"threshold": "0.01"})).get_text(" ")
    assert "1 token →" in text and "1 tokens" not in text
    ex = ones[0]
    one = _soup(client.get(f"{UNIT}/explain", params={"seq": ex["seq"], "pos": ex["pos"], "threshold": "0.01"}))
    said = one.select_one(".minimal-example").get_text(" ")
    assert "the focus token alone" in said and "the last 1 token" not in said and " keeps " in said


# -- the try page ---------------------------------------------------------------------------
def test_the_try_page_offers_what_mattered_without_a_position(client):
    text = "def wrap(text, width):\n    return text"
    data = client.get(f"/api/{M}/try", params={"text": text}).json()
    soup = _soup(client.get(f"/{M}/try", params={"text": text}))
    blocks = soup.select(".overall-units .try-source")
    assert len(blocks) == len(data["sources"])
    checked = 0
    for block, source in zip(blocks, data["sources"]):
        items = block.select("li")
        assert len(items) == len(source["overall"])
        for li, unit in zip(items, source["overall"]):
            link = li.select_one("a.why-link")
            if unit["pos"] == 0:
                assert link is None  # BOS: nothing before it to explain
                continue
            q = _query(link["href"])
            assert urlsplit(link["href"]).path == f"/{M}/{source['source']}/{unit['index']}/explain"
            assert q == {"text": [text], "pos": [str(unit["pos"])]}
            checked += 1
    assert checked
    # The link works: it explains that unit at that token.
    first = soup.select_one(".overall-units a.why-link")["href"]
    explained = client.get("/api" + first)
    assert explained.status_code == 200
    assert explained.json()["pos"] == int(_query(first)["pos"][0])


def test_byte_tokens_in_the_attribution_are_drawn_as_on_the_unit_page(client):
    """A character split over two tokens, the focus on its first byte: both bytes lie
    under the one character, each with its `<0xC3>`-style label and id on hover; the
    byte after the focus is not ablated, dotted and said so, as a whole token would be."""
    text = "café!"
    d = client.get(f"/api{UNIT}/explain", params={"text": text}).json()
    first = d["start"] + d["token_bytes"].index("c3")  # the sequence position of "é"'s first byte
    r = client.get(f"{UNIT}/explain", params={"text": text, "pos": str(first)})
    assert r.status_code == 200
    cells = _soup(r).select(".why-row .chars .t")
    assert len(cells) == 2
    assert cells[0]["title"].startswith('"<0xC3>" (id ') and ' in "é": ' in cells[0]["title"]
    assert "focus" in cells[0]["class"] and cells[0].get("data-act") is not None
    assert cells[1]["title"].startswith('"<0xA9>" (id ') and cells[1]["title"].endswith(' in "é": not measured')
    assert "unmeasured" in cells[1]["class"] and cells[1].get("data-act") is None
    # The unit page draws the same character from the same two tokens.
    live = _soup(client.get(UNIT, params={"text": text})).select("#live-result .live-tokens .chars .t")
    assert [c["title"].split(":")[0] for c in live] == [c["title"].split(":")[0] for c in cells]


def test_an_explanation_the_page_shows_has_no_note(client):
    soup = _soup(client.get(UNIT, params={"per_page": "3"}))
    key = soup.select("li.example a.full-link")[2]["data-open"]
    for params in ({"explain": key, "per_page": "3"}, {"explain": "top"}, {"explain": "text", "text": "abc"}):
        r = client.get(UNIT, params=params)
        assert r.status_code == 200 and _soup(r).select_one(".explain-note") is None, params
