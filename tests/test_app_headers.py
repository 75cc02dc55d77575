"""The response headers of every route of the app: a Content-Security-Policy without
inline script, a frame policy (only the embed view may be framed), nosniff and a
Referrer-Policy. Plus the embed view itself."""

from __future__ import annotations

import pytest
from bs4 import BeautifulSoup

M, S, SAE = "tiny", "0-mlp", "1-res-sae"

# Every route of the app (its path as app.routes names it) -> a request that reaches it:
# (method, URL, JSON body, expected status).
ROUTE_TABLE = {
    "/openapi.json": ("GET", "/openapi.json", None, 200),
    "/static": ("GET", "/static/style.css", None, 200),
    "/docs": ("GET", "/docs", None, 200),
    "/favicon.ico": ("GET", "/favicon.ico", None, 200),
    "/api": ("GET", "/api", None, 200),
    "/api/{model}": ("GET", f"/api/{M}", None, 200),
    "/api/{model}/sequences/{seq}": ("GET", f"/api/{M}/sequences/0", None, 200),
    "/api/{model}/activations": ("POST", f"/api/{M}/activations", {"text": "def f(x):", "source": S}, 200),
    "/api/{model}/try": ("GET", f"/api/{M}/try?text=def+f", None, 200),
    "/api/{model}/search": ("GET", f"/api/{M}/search?token=def", None, 200),
    "/api/{model}/compare": ("GET", f"/api/{M}/compare?units={S}/3,{S}/4", None, 200),
    "/api/{model}/reservoir": ("GET", f"/api/{M}/reservoir", None, 200),
    "/api/{model}/{source}": ("GET", f"/api/{M}/{S}", None, 200),
    "/api/{model}/{source}/random": ("GET", f"/api/{M}/{S}/random", None, 302),
    "/api/{model}/{source}/export.{fmt}": ("GET", f"/api/{M}/{S}/export.jsonl", None, 200),
    "/api/{model}/{source}/{index}": ("GET", f"/api/{M}/{S}/3", None, 200),
    "/api/{model}/{source}/{index}/similar": ("GET", f"/api/{M}/{S}/3/similar", None, 200),
    "/api/{model}/{source}/{index}/hypothesis": ("GET", f"/api/{M}/{S}/3/hypothesis?regex=def", None, 200),
    "/api/{model}/{source}/{index}/explain": ("GET", f"/api/{M}/{S}/3/explain?seq=0&pos=5", None, 200),
    "/api/{model}/{source}/{index}/minimal": ("GET", f"/api/{M}/{S}/3/minimal", None, 200),
    "/embed/{model}/{source}/{index}": ("GET", f"/embed/{M}/{S}/3", None, 200),
    "/": ("GET", "/", None, 200),
    "/{model}": ("GET", f"/{M}", None, 200),
    "/{model}/try": ("GET", f"/{M}/try?text=def+f", None, 200),
    "/{model}/search": ("GET", f"/{M}/search?token=def", None, 200),
    "/{model}/compare": ("GET", f"/{M}/compare?units={S}/3,{S}/4", None, 200),
    "/{model}/sequences/{seq}": ("GET", f"/{M}/sequences/0", None, 200),
    "/{model}/{source}": ("GET", f"/{M}/{S}", None, 200),
    "/{model}/{source}/random": ("GET", f"/{M}/{S}/random", None, 302),
    "/{model}/{source}/{index}": ("GET", f"/{M}/{S}/3", None, 200),
    "/{model}/{source}/{index}/live": ("GET", f"/{M}/{S}/3/live?text=def", None, 303),
    "/{model}/{source}/{index}/similar": ("GET", f"/{M}/{S}/3/similar", None, 200),
    "/{model}/{source}/{index}/hypothesis": ("GET", f"/{M}/{S}/3/hypothesis?regex=def", None, 200),
    "/{model}/{source}/{index}/explain": ("GET", f"/{M}/{S}/3/explain?seq=0&pos=5", None, 200),
    "/{model}/{source}/{index}/minimal": ("GET", f"/{M}/{S}/3/minimal", None, 200),
}
# Errors and cached answers take other paths through the app: they carry the headers too.
EXTRA = [
    ("GET", "/no-such-model", None, 404),
    ("GET", "/api/no-such-model", None, 404),
    ("GET", f"/embed/{M}/{S}/100000", None, 404),
    ("GET", f"/api/{M}/{S}/abc", None, 422),
    ("POST", f"/api/{M}/activations", {"text": ""}, 422),
    ("GET", f"/api/{M}/{S}/3/hypothesis?regex=(", None, 422),
    ("GET", f"/{M}/{S}/3", None, 200),  # the second time, from the response cache
    ("GET", f"/api/{M}/{S}/3", None, 200),
]


def csp_directives(value: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            assert words[0] not in out, f"directive {words[0]} twice in {value!r}"
            out[words[0]] = words[1:]
    return out


def check_headers(url: str, headers) -> None:
    embed = url.startswith("/embed/")
    assert headers.get_list("content-security-policy") == [headers["content-security-policy"]], url
    csp = csp_directives(headers["content-security-policy"])
    assert csp["default-src"] == ["'self'"], url
    assert csp["script-src"] == ["'self'"], url  # no 'unsafe-inline', no 'unsafe-eval'
    assert csp["style-src"] == ["'self'"], url
    assert csp["style-src-attr"] == ["'unsafe-inline'"], url
    assert csp["object-src"] == ["'none'"] and csp["base-uri"] == ["'none'"], url
    assert csp["frame-ancestors"] == (["*"] if embed else ["'none'"]), url
    assert headers.get("x-frame-options") == (None if embed else "DENY"), url
    assert headers["x-content-type-options"] == "nosniff", url
    assert headers["referrer-policy"] == "same-origin", url


def route_paths(routes) -> set[str]:
    """The paths of every route, walking into included routers (FastAPI keeps a router
    included without a prefix as one entry holding the router's own routes)."""
    out: set[str] = set()
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            out |= route_paths(inner.routes)
        else:
            out.add(r.path)
    return out


@pytest.fixture(scope="module")
def app_routes(client):
    return route_paths(client.app.routes)


def test_the_route_table_covers_every_route(app_routes):
    """A route added without an entry in ROUTE_TABLE fails here: its headers are unchecked."""
    assert app_routes == set(ROUTE_TABLE)


@pytest.mark.parametrize("route", list(ROUTE_TABLE))
def test_route_headers(client, route):
    method, url, body, status = ROUTE_TABLE[route]
    resp = client.request(method, url, json=body, follow_redirects=False)
    assert resp.status_code == status, (url, resp.text[:300])
    check_headers(url, resp.headers)


@pytest.mark.parametrize("method,url,body,status", EXTRA)
def test_error_and_cached_answers_carry_the_headers(client, method, url, body, status):
    resp = client.request(method, url, json=body, follow_redirects=False)
    assert resp.status_code == status, (url, resp.text[:300])
    check_headers(url, resp.headers)


def test_no_page_has_an_inline_script_or_style_element(client):
    """The CSP would block them: every script is a file under /static, and there is no
    <style> element (htmx's indicator style is switched off in its config meta)."""
    for route, (method, url, _, status) in ROUTE_TABLE.items():
        if method != "GET" or status != 200 or url.startswith(("/api", "/static", "/openapi", "/favicon")):
            continue
        soup = BeautifulSoup(client.get(url).text, "html.parser")
        assert [s for s in soup.find_all("script") if not s.get("src")] == [], url
        assert soup.find_all("style") == [], url
        assert not [t.name for t in soup.find_all(True) if any(a.startswith("on") for a in t.attrs)], url
        if not url.startswith("/embed/"):
            meta = soup.find("meta", attrs={"name": "htmx-config"})
            assert meta is not None and '"includeIndicatorStyles": false' in meta["content"], url


# -- the embed view ------------------------------------------------------------------------
def test_embed_card_shows_the_units_top_examples_stats_and_a_way_out(client, db):
    index = 3
    html = client.get(f"/embed/{M}/{S}/{index}").text
    soup = BeautifulSoup(html, "html.parser")
    ref = db.execute(
        "SELECT e.act FROM examples e WHERE e.model = ? AND e.source = ? AND e.unit = ? AND e.band IS NULL "
        "ORDER BY e.rank LIMIT 5",
        [M, S, index],
    ).fetchall()
    shown = [float(li.select_one(".ex-act").get_text()) for li in soup.select("li.example")]
    assert shown == pytest.approx([round(a, 3) for (a,) in ref], abs=1e-3)
    assert len(shown) == min(5, len(ref)) and len(shown) > 0
    st = client.get(f"/api/{M}/{S}/{index}").json()["stats"]
    assert float(soup.select_one(".stat-max").get_text()) == pytest.approx(st["max"], abs=1e-3)
    # Links leave the frame (the site's other pages refuse to be framed).
    links = soup.select("a[href]")
    assert {a["href"] for a in links} == {f"/{M}/{S}/{index}"}
    assert all(a.get("target") == "_blank" and "noopener" in a.get("rel", []) for a in links)
    assert soup.select_one("link[rel=alternate]")["href"] == f"/api/{M}/{S}/{index}"
    assert soup.find_all("script") == []
    # The unit page links to its card.
    unit = BeautifulSoup(client.get(f"/{M}/{S}/{index}").text, "html.parser")
    assert unit.select_one("a.embed-link")["href"] == f"/embed/{M}/{S}/{index}"


def test_embed_under_a_prefix_links_inside_it(web_index):
    from fixtures_web import make_client

    with make_client(web_index, root_path="/actscope") as c:
        resp = c.get("/actscope/embed/tiny/0-mlp/3")
        check_headers("/embed/", resp.headers)
        links = {a["href"] for a in BeautifulSoup(resp.text, "html.parser").select("a[href]")}
        assert links == {"/actscope/tiny/0-mlp/3"}
        unit = BeautifulSoup(c.get("/actscope/tiny/0-mlp/3").text, "html.parser")
        assert unit.select_one("a.embed-link")["href"] == "/actscope/embed/tiny/0-mlp/3"
        # Under the prefix, a page that is not the embed view still refuses frames.
        assert "frame-ancestors 'none'" in c.get("/actscope/tiny/0-mlp/3").headers["content-security-policy"]
