"""Every route of the app, HTML and JSON, with its status; the one error shape; escaping."""

from __future__ import annotations

import pytest
from bs4 import BeautifulSoup

from fixtures_web import token_of

M, S, SAE = "tiny", "0-mlp", "1-res-sae"

ROUTES = [
    # (path, status, kind)
    ("/", 200, "html"),
    ("/api", 200, "json"),
    (f"/{M}", 200, "html"),
    (f"/api/{M}", 200, "json"),
    (f"/{M}/{S}", 200, "html"),
    (f"/api/{M}/{S}", 200, "json"),
    (f"/{M}/{S}?sort=density&order=asc&page=1&per_page=2", 200, "html"),
    (f"/api/{M}/{S}?sort=cos_in_out&order=desc", 200, "json"),
    (f"/{M}/{S}?q=zzzz-no-such-token", 200, "html"),
    (f"/{M}/{S}/0", 200, "html"),
    (f"/api/{M}/{S}/0", 200, "json"),
    (f"/{M}/{SAE}/1", 200, "html"),
    (f"/api/{M}/{SAE}/1", 200, "json"),
    (f"/{M}/{S}/0?band=0", 200, "html"),
    (f"/api/{M}/{S}/0?band=top", 200, "json"),
    (f"/{M}/sequences/0", 200, "html"),
    (f"/api/{M}/sequences/0", 200, "json"),
    (f"/{M}/search", 200, "html"),
    (f"/{M}/search?token=the", 200, "html"),
    (f"/api/{M}/search?token=the", 200, "json"),
    (f"/{M}/try", 200, "html"),
    ("/docs", 200, "html"),
    ("/openapi.json", 200, "json"),
    ("/static/style.css", 200, "css"),
    ("/static/app.js", 200, "js"),
    ("/static/vendor/htmx.min.js", 200, "htmx"),
    # bad input: 404 / 422, never 500
    ("/no-such-model", 404, "html"),
    ("/api/no-such-model", 404, "json"),
    (f"/{M}/no-such-source", 404, "html"),
    (f"/api/{M}/no-such-source", 404, "json"),
    (f"/{M}/{S}/100000", 404, "html"),
    (f"/api/{M}/{S}/100000", 404, "json"),
    (f"/{M}/{S}/-1", 404, "html"),
    (f"/api/{M}/{S}/-1", 404, "json"),
    (f"/{M}/{S}/abc", 422, "html"),
    (f"/api/{M}/{S}/abc", 422, "json"),
    (f"/{M}/{S}/1.5", 422, "html"),
    (f"/api/{M}/{S}/0?band=99", 404, "json"),  # no such band: well formed, not there
    (f"/{M}/{S}/0?band=x", 422, "html"),
    (f"/api/{M}/{S}?sort=bogus", 422, "json"),
    (f"/{M}/{S}?order=sideways", 422, "html"),
    (f"/api/{M}/{S}?page=0", 422, "json"),
    (f"/api/{M}/{S}?page=9999", 404, "json"),
    (f"/{M}/{S}?page=abc", 422, "html"),
    (f"/api/{M}/{S}?min_density=lots", 422, "json"),
    (f"/api/{M}/sequences/999999", 404, "json"),
    (f"/{M}/sequences/x", 422, "html"),
    (f"/api/{M}/{S}/export.csv", 404, "json"),
    (f"/{M}/{S}/0/extra/parts", 404, "html"),
    ("/api/no-such-model/x/1", 404, "json"),
]


@pytest.mark.parametrize("path,status,kind", ROUTES)
def test_route(client, path, status, kind):
    r = client.get(path, follow_redirects=False)
    assert r.status_code == status, (path, r.text[:300])
    ctype = r.headers["content-type"]
    if kind == "html":
        assert ctype.startswith("text/html")
        soup = BeautifulSoup(r.text, "html.parser")
        assert soup.find("title") is not None
        if status >= 400 and soup.select_one("table.units") is not None:
            # A source table's bad input: the table, and the message next to its form.
            assert status == 422 and soup.select_one(".form-error:not([hidden])").get_text(strip=True)
        elif status >= 400:
            # A friendly page with the message and a way back.
            assert soup.select_one(".error-message").get_text(strip=True)
            assert soup.select_one(".way-back a[href='/']") is not None
    elif kind == "json":
        assert ctype.startswith("application/json")
        body = r.json()
        if status >= 400:
            assert body == {"error": {"status": status, "message": body["error"]["message"]}}
            assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    elif kind == "css":
        assert "prefers-color-scheme: dark" in r.text
    elif kind == "js":
        assert "keydown" in r.text
    elif kind == "htmx":
        assert "htmx" in r.text and len(r.text) > 10_000


@pytest.mark.parametrize("spelling", ["001", "+1", "1.0", "%201"])
def test_unit_index_spellings_as_fastapi_parses_them(client, spelling):
    # Plain digits take the unit routes' direct path (app/fast_route.py), any other
    # spelling FastAPI's own parsing: the answers must not depend on which.
    want = client.get(f"/api/{M}/{S}/1")
    got = client.get(f"/api/{M}/{S}/{spelling}")
    assert got.status_code == want.status_code == 200 and got.json() == want.json()
    page = client.get(f"/{M}/{S}/{spelling}")
    assert page.status_code == 200
    assert BeautifulSoup(page.text, "html.parser").select_one(".unit-index").get_text() == "1"


def test_unit_routes_without_the_router_answer_as_through_it(client):
    # HotRoutes (app/fast_route.py) sends a unit request straight to its endpoint once
    # it has seen where the router sends that model and source; a path of the same
    # shape that belongs to another route (sequences) must stay there.
    from actscope.app.fast_route import HotRoutes

    for _ in range(2):
        assert client.get(f"/api/{M}/sequences/1").json()["seq"] == 1
        assert client.get(f"/{M}/sequences/1").text.count('class="t') > 1
    client.get(f"/api/{M}/{S}/2")
    client.get(f"/{M}/{S}/2")
    hot = client.app.middleware_stack
    while not isinstance(hot, HotRoutes):
        hot = hot.app
    learned = {key[1:]: taken for key, taken in hot.learned.items()}
    assert learned[(M, S)] is True and learned[(M, "sequences")] is False
    # Straight to the endpoint ("7") and through FastAPI's own parsing ("+7"): the same answers.
    for query in ("?per_page=3", "?band=1&page=2&per_page=2"):
        direct = client.get(f"/api/{M}/{S}/7{query}")
        routed = client.get(f"/api/{M}/{S}/+7{query}")
        assert direct.status_code == routed.status_code == 200 and direct.json() == routed.json()
        page, routed_page = client.get(f"/{M}/{S}/7{query}"), client.get(f"/{M}/{S}/+7{query}")
        assert page.text == routed_page.text.replace("/%2B7", "/7").replace("/+7", "/7")


def test_store_reads_only_the_bands_asked_for(client):
    store = client.app.state.catalog.store(M)
    whole = store.unit(M, S, 3)
    part = store.unit(M, S, 3, bands={1})
    assert part.top == whole.top and part.stats == whole.stats
    assert [b.stored for b in part.bands] == [len(b.examples) for b in whole.bands]
    assert [b.examples for b in part.bands] == [b.examples if b.band == 1 else [] for b in whole.bands]
    assert whole.bands[1].examples  # the fixture stores band examples


def test_error_shape_on_post(client):
    # Malformed body, missing fields and wrong types all give the same shape.
    for body in [None, {}, {"text": "hi"}, {"text": 3, "source": S}, {"text": "x", "source": S, "index": "a"}]:
        r = client.post(f"/api/{M}/activations", json=body)
        assert r.status_code == 422
        assert set(r.json()) == {"error"} and r.json()["error"]["status"] == 422
    r = client.post(f"/api/{M}/activations", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["status"] == 422


def test_random_redirects_to_a_unit(client):
    for prefix in ("", "/api"):
        r = client.get(f"{prefix}/{M}/{S}/random", follow_redirects=False)
        assert r.status_code == 302
        loc = r.headers["location"]
        assert loc.startswith(f"{prefix}/{M}/{S}/")
        assert client.get(loc).status_code == 200


def test_every_page_announces_its_json_twin(client):
    for path in ["/", f"/{M}", f"/{M}/{S}", f"/{M}/{S}/0", f"/{M}/sequences/0", f"/{M}/search?token=the"]:
        soup = BeautifulSoup(client.get(path).text, "html.parser")
        link = soup.find("link", rel="alternate", type="application/json")
        assert link is not None, path
        twin = client.get(link["href"])
        assert twin.status_code == 200 and twin.headers["content-type"].startswith("application/json"), path


def test_home_lists_models_and_sources(client):
    soup = BeautifulSoup(client.get("/").text, "html.parser")
    api = client.get("/api").json()
    slugs = [a.get_text() for a in soup.select("a.source-link")]
    assert slugs == [s["slug"] for m in api["models"] for s in m["sources"]]
    hooks = [c.get_text() for c in soup.select("table.sources td code")]
    assert hooks == [s["hook_name"] for m in api["models"] for s in m["sources"]]
    assert soup.select_one(".n-tokens").get_text() == f"{api['models'][0]['n_tokens']:,}"
    assert soup.select_one("form.search input[name=token]") is not None


def test_source_table_sort_and_pages(client):
    data = client.get(f"/api/{M}/{S}?sort=max&order=desc&per_page=2").json()
    maxes = [u["max"] for u in data["units"]]
    assert maxes == sorted(maxes, reverse=True) and len(maxes) == 2
    assert data["next_page"] is not None and data["page"] == 1
    page2 = client.get("/api" + data["next_page"]).json()
    assert page2["page"] == 2 and page2["units"][0]["max"] <= maxes[-1]
    soup = BeautifulSoup(client.get(f"/{M}/{S}?sort=max&order=desc&per_page=2").text, "html.parser")
    rows = soup.select("table.units tbody tr")
    assert [int(r.select_one("a.unit-link").get_text()) for r in rows] == [u["index"] for u in data["units"]]
    header = soup.select_one("th[aria-sort]")
    assert header["aria-sort"] == "descending" and "max" in header.get_text()


def test_unit_page_html(client):
    data = client.get(f"/api/{M}/{S}/0").json()
    soup = BeautifulSoup(client.get(f"/{M}/{S}/0").text, "html.parser")
    examples = soup.select("#examples li.example")
    assert len(examples) == len(data["top"])
    first = examples[0]
    toks = first.select(".toks .t")
    assert [token_of(t) for t in toks] == data["top"][0]["tokens"]
    assert [float(t["data-act"]) for t in toks] == pytest.approx(data["top"][0]["acts"], abs=1e-4)
    focus = first.select(".t.focus")
    assert len(focus) == 1 and toks.index(focus[0]) == data["top"][0]["focus"]
    # Band links (bands that hold tokens), named by quantile range, with range and share.
    tabs = soup.select("nav.tabs a.band-tab")
    held = [b for b in reversed(data["bands"]) if b["count"] > 0]
    assert len(tabs) == len(held)
    for tab, band in zip(tabs, held):
        assert "of all tokens" in tab.get_text() and f"B{band['band']}" in tab.get_text()
        assert tab.select_one(".tab-name").get_text().startswith(band["name"])
    # Histogram with band marks, stats, logits, navigation and shortcuts.
    assert len(soup.select(".hist svg rect.bar")) == len(data["stats"]["histogram"]["counts"])
    assert soup.select(".hist svg line.band-mark")
    assert soup.select_one("a#next-unit")["href"] == data["links"]["next"]
    assert soup.select_one("a#prev-unit")["href"] == data["links"]["prev"]
    assert soup.select_one("a#random-unit") is not None
    assert "j" in soup.select_one(".shortcuts").get_text() and "/" in soup.select_one(".shortcuts").get_text()
    assert len(soup.select(".top-logits tr")) == len(data["logits"]["top"])
    assert soup.select_one("form#live-form textarea[name=text]") is not None
    assert soup.select("a.full-link")


def test_band_tab_shows_band_examples(client):
    data = client.get(f"/api/{M}/{S}/0").json()
    band = data["bands"][-1]
    soup = BeautifulSoup(client.get(f"/{M}/{S}/0?band={band['band']}").text, "html.parser")
    assert len(soup.select("#examples li.example")) == len(band["examples"])
    active = soup.select_one("nav.tabs a.active")
    assert active["aria-current"] == "page" and active["href"] == f"/{M}/{S}/0?band={band['band']}"
    assert active.select_one(".band-no").get_text() == f"B{band['band']}"
    assert not soup.select('[role="tab"], [role="tablist"]')  # plain links, marked as such


def test_htmx_band_request_gets_only_the_examples_block(client):
    r = client.get(f"/{M}/{S}/0?band=0", headers={"HX-Request": "true", "HX-Target": "examples"})
    assert r.status_code == 200
    assert "<html" not in r.text and r.text.lstrip().startswith('<section id="examples"')


def test_corpus_tokens_are_escaped(xss_index):
    from fixtures_web import XSS_TOKEN, make_client

    path, source, unit = xss_index
    with make_client(path, live=False) as c:
        html = c.get(f"/{M}/{source}/{unit}").text
        assert XSS_TOKEN not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        soup = BeautifulSoup(html, "html.parser")
        assert not [s for s in soup.find_all("script") if "alert" in (s.string or "")]
        assert XSS_TOKEN in [t.get_text() for t in soup.select(".toks .t")]
        assert XSS_TOKEN in [token_of(t) for t in soup.select(".toks .t")]
        # JSON carries the raw text; the source table and search escape it too.
        assert XSS_TOKEN in c.get(f"/api/{M}/{source}/{unit}").json()["top"][0]["tokens"]
        for page in [f"/{M}/{source}?per_page=500", f"/{M}/search?token=%3Cscript%3Ealert(1)%3C/script%3E"]:
            assert XSS_TOKEN not in c.get(page).text


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for p in [
        "/api",
        "/api/{model}/{source}/{index}",
        "/api/{model}/sequences/{seq}",
        "/api/{model}/activations",
        "/api/{model}/{source}/export.{fmt}",
        "/api/{model}/search",
    ]:
        assert p in paths, p
    unit = paths["/api/{model}/{source}/{index}"]["get"]["responses"]
    assert "404" in unit and "422" in unit
    assert not [p for p in paths if not p.startswith("/api")]


def test_unit_page_parts_built_in_python_are_escaped():
    # Tabs, example items and logit rows are HTML built in app/render.py, not by
    # Jinja's autoescape: text that could hold markup must still come out escaped.
    from actscope.app.render import example_items, example_tabs, logit_rows
    from actscope.app.token_html import TokenTable

    table = TokenTable([b"<x>", b"&", b"</td>"])

    d = {
        "model": "m",
        "index": 1,
        "text": 'a"&<b>',
        "band": "0",
        "top": [],
        "stats": {"max": 1.0},
        "source": {"slug": "s", "band_basis": "all"},
        "bands": [
            {"band": 0, "name": "<i>", "q_lo": 0.0, "q_hi": 0.5, "lo": -1.0, "hi": 0.0, "count": 1, "share": 1e-6}
        ],
    }
    tabs = BeautifulSoup(str(example_tabs(d)), "html.parser")
    assert tabs.select_one("a.band-tab.active .share").get_text() == "<0.01% of all tokens"
    assert tabs.select_one("a.band-tab")["href"] == "/m/s/1?band=0&text=a%22%26%3Cb%3E"
    assert tabs.select_one("a.band-tab .tab-name").get_text().startswith("<i>")
    ex = {"seq": 3, "pos": 2, "act": 1.5, "start": 1, "focus": 1, "token_ids": [0, 1], "acts": [0.5, 1.5]}
    item = BeautifulSoup(str(example_items(table, [ex], "m", "s&t", 1, 2.0, state={"text": "<&>"})), "html.parser")
    assert [t.get_text() for t in item.select(".t")] == ["<x>", "&"]
    link = item.select_one("a.full-link")
    assert link["href"] == "/m/s%26t/1?text=%3C%26%3E&open=3%3A2#ex-0"
    assert link["data-seq"] == "/m/sequences/3?source=s%26t&index=1&pos=2"
    rows = BeautifulSoup(str(logit_rows(table, [{"token_id": 2, "value": -0.25}], "neg-text")), "html.parser")
    assert rows.select_one("code").get_text() == '"</td>"' and rows.select_one(".num").get_text() == "-0.250"


def test_every_api_parameter_is_described(client):
    spec = client.get("/openapi.json").json()
    undocumented = [
        (method, path, p["name"])
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        for p in op.get("parameters", [])
        if not p.get("description")
    ]
    assert undocumented == []
    unit = spec["paths"]["/api/{model}/{source}/{index}"]["get"]
    assert [p["name"] for p in unit["parameters"]] == [
        "model",
        "source",
        "index",
        "text",
        "band",
        "page",
        "per_page",
        "open",
    ]
