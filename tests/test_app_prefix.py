"""The site served under a path prefix, behind a reverse proxy that strips it.

uvicorn serves the real app with root_path=/actscope (as `actscope serve --root-path
/actscope` does) and a proxy in front forwards /actscope/... to it without the prefix.
A crawler starts at /actscope/ and follows every same-site URL a page or a JSON answer
holds, as a browser would: every one must carry the prefix and answer.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from bs4 import BeautifulSoup

from fixtures_web import PREFIX

M, S = "tiny", "0-mlp"
TEXT = "def wrap(text, width):\n    return text"
PATTERN = r"\bdef\b"  # what a visitor types in the regex box of the hypothesis form
# Attributes holding a URL the browser (or htmx) requests.
URL_ATTRS = ("href", "src", "action", "hx-get", "hx-post", "hx-put", "hx-patch", "hx-delete")
PER_SHAPE = 3  # pages crawled per URL shape (path with numbers as N, parameter names)
# Documented answers other than 200: the try page without text announces its JSON twin,
# whose `text` is required (docs/api.md).
EXPECTED = {f"{PREFIX}/api/{M}/try": 422}
# Keys of JSON answers holding a page URL.
JSON_URL_KEYS = ("url", "prev_page", "next_page", "prev", "next", "random", "source")


def _shape(url: str, htmx: bool) -> tuple:
    parts = urlsplit(url)
    names = tuple(sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}))
    return re.sub(r"\d+", "N", parts.path), names, htmx


def _is_site_url(url: str) -> bool:
    return url.startswith("/") and not url.startswith("//")


def _form_url(form, action: str) -> str:
    """The URL a GET form submits to with its current values (empty text boxes get a
    text, so live inference runs)."""
    fields = []
    for el in form.find_all(["input", "textarea", "select"]):
        name = el.get("name")
        if not name or el.get("type") in ("submit", "button"):
            continue
        if el.name == "textarea":
            value = el.get_text().removeprefix("\n") or TEXT  # a browser drops a newline opening a textarea
        elif el.name == "select":
            chosen = el.find("option", selected=True) or el.find("option")
            value = chosen.get("value", chosen.get_text()) if chosen else ""
        else:
            value = el.get("value", "") or (PATTERN if name == "regex" else "")
        fields.append((name, value))
    return action + ("&" if "?" in action else "?") + urlencode(fields) if fields else action


class Crawler:
    def __init__(self, site: str):
        self.http = httpx.Client(base_url=site, follow_redirects=False, timeout=120)
        self.queue: deque[tuple[str, str | None]] = deque()  # (URL, htmx target or None)
        self.seen: set[tuple[str, str | None]] = set()
        self.shapes: Counter = Counter()
        self.fetched: list[tuple[str, int]] = []
        self.found: set[str] = set()  # every URL found on a page or in a JSON answer

    def add(self, url: str, where: str, target: str | None = None) -> None:
        """A URL found on page `where`: it must carry the prefix; queue it."""
        assert _is_site_url(url), (where, url)
        assert url.startswith(PREFIX + "/"), f"{where}: {url} lacks the prefix {PREFIX}"
        self.found.add(url)
        key = (url, target)
        if key in self.seen:
            return
        self.seen.add(key)
        shape = _shape(url, target is not None)
        if self.shapes[shape] < PER_SHAPE:
            self.shapes[shape] += 1
            self.queue.append(key)

    def get(self, url: str, target: str | None = None) -> httpx.Response:
        headers = {"HX-Request": "true", "HX-Target": target} if target else {}
        r = self.http.get(url, headers=headers)
        self.fetched.append((url, r.status_code))
        return r

    def crawl(self, start: str) -> None:
        self.add(start, "start")
        while self.queue:
            url, target = self.queue.popleft()
            r = self.get(url, target)
            if r.status_code in (302, 303):
                self.add(r.headers["location"], f"redirect from {url}")
                continue
            assert r.status_code == EXPECTED.get(url, 200), (url, target, r.status_code, r.text[:300])
            if "hx-push-url" in r.headers:
                self.add(r.headers["hx-push-url"], f"HX-Push-Url of {url}")
            ctype = r.headers["content-type"]
            if ctype.startswith("text/html"):
                self.page(url, r.text)
            elif ctype.startswith("application/json") and not url.endswith("/openapi.json"):  # page data
                self.json(url, r.json())

    def page(self, url: str, html: str) -> None:
        soup = BeautifulSoup(html, "html.parser")
        for el in soup.find_all(True):
            for attr in URL_ATTRS:
                value = el.get(attr)
                if value is None or value.startswith(("#", "data:")):
                    continue
                assert not re.match(r"[a-z]+:", value), f"{url}: {value} points off the site"
                target = el.get("hx-target", "").lstrip("#") or None
                if el.name == "form" and attr in ("action", "hx-get"):
                    self.add(_form_url(el, value), url, target if attr == "hx-get" else None)
                elif attr.startswith("hx-"):
                    self.add(value, url, target or "body")
                else:
                    self.add(value, url)
        # Swagger UI loads the schema from a script.
        for spec in re.findall(r"url: '([^']*)'", html):
            self.add(spec, url)

    def json(self, url: str, data) -> None:
        if isinstance(data, dict):
            for key, value in data.items():
                if key in JSON_URL_KEYS and isinstance(value, str) and value.startswith("/"):
                    self.add(value, url)
                else:
                    self.json(url, value)
        elif isinstance(data, list):
            for item in data:
                self.json(url, item)


@pytest.fixture(scope="module")
def crawled(prefixed_site):
    crawler = Crawler(prefixed_site.url)
    crawler.crawl(PREFIX + "/")
    return crawler


@pytest.mark.slow
def test_every_url_carries_the_prefix_and_answers(crawled):
    # Every kind of page, fragment, JSON answer and file was reached from the home page.
    paths = {urlsplit(u).path for u, _ in crawled.fetched}
    for want in [
        f"{PREFIX}/",
        f"{PREFIX}/api",
        f"{PREFIX}/{M}",
        f"{PREFIX}/api/{M}",
        f"{PREFIX}/{M}/{S}",
        f"{PREFIX}/api/{M}/{S}",
        f"{PREFIX}/{M}/{S}/random",
        f"{PREFIX}/{M}/try",
        f"{PREFIX}/api/{M}/try",
        f"{PREFIX}/{M}/search",
        f"{PREFIX}/api/{M}/search",
        f"{PREFIX}/api/{M}/{S}/export.parquet",
        f"{PREFIX}/api/{M}/{S}/export.jsonl",
        f"{PREFIX}/docs",
        f"{PREFIX}/openapi.json",
        f"{PREFIX}/static/style.css",
        f"{PREFIX}/static/app.js",
        f"{PREFIX}/static/vendor/htmx.min.js",
        f"{PREFIX}/static/vendor/swagger-ui-bundle.js",
        f"{PREFIX}/static/vendor/swagger-ui.css",
    ]:
        assert want in paths, want
    kinds = {_shape(u, False)[0] for u, _ in crawled.fetched}
    for want in [
        f"{PREFIX}/{M}/N-mlp/N",  # unit pages
        f"{PREFIX}/api/{M}/N-mlp/N",
        f"{PREFIX}/{M}/N-mlp/N/live",  # the live block (htmx)
        f"{PREFIX}/{M}/N-mlp/N/hypothesis",  # the regex box's page, and its JSON twin
        f"{PREFIX}/api/{M}/N-mlp/N/hypothesis",
        f"{PREFIX}/{M}/sequences/N",  # "show full sequence"
        f"{PREFIX}/api/{M}/sequences/N",
    ]:
        assert want in kinds, want
    # Band tabs, the live text, the source table's sort, filter and pages were followed.
    queries = [urlsplit(u).query for u, _ in crawled.fetched]
    for param in ["band=", "text=", "sort=", "min_pct=", "page="]:
        assert any(param in q for q in queries), param
    assert len(crawled.fetched) < 1000


@pytest.mark.slow
def test_htmx_fragments_and_their_pushed_urls(crawled):
    fragments = [(u, t) for u, t in crawled.seen if t is not None]
    assert {t for _, t in fragments} >= {"units", "examples", "live-result", "try-result"}
    live = next(u for u, t in fragments if t == "live-result")
    r = crawled.get(live, "live-result")
    assert r.status_code == 200 and "<html" not in r.text
    assert r.headers["hx-push-url"].startswith(f"{PREFIX}/{M}/")
    # Without htmx the block's URL redirects to the page, under the prefix.
    plain = crawled.get(live)
    assert plain.status_code == 303 and plain.headers["location"].startswith(f"{PREFIX}/{M}/")
    assert "/live" not in plain.headers["location"]


@pytest.mark.slow
def test_redirect_location_carries_the_prefix(crawled):
    for url in [f"{PREFIX}/{M}/{S}/random", f"{PREFIX}/api/{M}/{S}/random"]:
        r = crawled.get(url)
        assert r.status_code == 302, url
        loc = r.headers["location"]
        assert re.fullmatch(re.escape(url.rsplit("/", 1)[0]) + r"/\d+", loc), loc
        assert crawled.get(loc).status_code == 200


@pytest.mark.slow
def test_json_urls_carry_the_prefix(crawled):
    unit = crawled.get(f"{PREFIX}/api/{M}/{S}/0").json()
    assert unit["links"] == {
        "prev": f"{PREFIX}/{M}/{S}/{unit['source']['n_units'] - 1}",
        "next": f"{PREFIX}/{M}/{S}/1",
        "prev_any": f"{PREFIX}/{M}/{S}/{unit['source']['n_units'] - 1}",
        "next_any": f"{PREFIX}/{M}/{S}/1",
        "random": f"{PREFIX}/{M}/{S}/random",
        "random_dead": None,  # 0-mlp has no dead units
        "source": f"{PREFIX}/{M}/{S}",
        "compare": None,  # the tiny model's neurons are indexed at hook_post only
    }
    table = crawled.get(f"{PREFIX}/api/{M}/{S}?per_page=2").json()
    assert table["next_page"].startswith(f"{PREFIX}/{M}/{S}?") and "page=2" in table["next_page"]
    tried = crawled.http.get(f"{PREFIX}/api/{M}/try", params={"text": TEXT, "source": S}).json()
    assert all(
        u["url"].startswith(f"{PREFIX}/{M}/{b['source']}/") for b in tried["sources"] for t in b["top"] for u in t
    )
    ex = unit["top"][0]
    found = crawled.http.get(f"{PREFIX}/api/{M}/search", params={"token": ex["tokens"][ex["focus"]]}).json()
    assert found["units"]
    assert all(u["url"].startswith(f"{PREFIX}/{M}/") for u in found["units"])
    live = crawled.http.post(f"{PREFIX}/api/{M}/activations", json={"text": TEXT, "source": S, "k": 2})
    assert live.status_code == 200
    assert all(u["url"].startswith(f"{PREFIX}/{M}/{S}/") for u in live.json()["overall"])


@pytest.mark.slow
def test_openapi_servers_and_docs(crawled):
    spec = crawled.get(f"{PREFIX}/openapi.json").json()
    assert spec["servers"] == [{"url": PREFIX}]
    assert all(p.startswith("/api") for p in spec["paths"])
    # "Try it out" calls the server URL + the path.
    assert crawled.get(spec["servers"][0]["url"] + "/api").status_code == 200
    docs = crawled.get(f"{PREFIX}/docs").text
    assert f'data-openapi="{PREFIX}/openapi.json"' in docs
    assert f'src="{PREFIX}/static/vendor/swagger-ui-bundle.js"' in docs


@pytest.mark.slow
def test_errors_under_the_prefix(crawled):
    r = crawled.get(f"{PREFIX}/api/no-such-model")
    assert r.status_code == 404 and r.json()["error"]["status"] == 404  # JSON: the path is under /api
    r = crawled.get(f"{PREFIX}/{M}/{S}/0?band=x")
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html")
    for url, message in [
        (f"{PREFIX}/no-such-model/x", "No model 'no-such-model'"),
        (f"{PREFIX}/static/nope.css", f"No page at {PREFIX}/static/nope.css."),
    ]:
        r = crawled.get(url)
        assert r.status_code == 404
        soup = BeautifulSoup(r.text, "html.parser")
        assert message in soup.select_one(".error-message").get_text()
        assert soup.select_one(f".way-back a[href='{PREFIX}/']") is not None
        links = [el.get(a) for el in soup.find_all(True) for a in ("href", "src") if el.get(a)]
        links = [v for v in links if not v.startswith("data:")]
        assert links and all(v.startswith(PREFIX + "/") for v in links), links
    twin = BeautifulSoup(crawled.get(f"{PREFIX}/no-such-model").text, "html.parser")
    assert twin.find("link", rel="alternate")["href"] == f"{PREFIX}/api/no-such-model"


@pytest.mark.slow
def test_the_proxy_serves_only_the_prefix(prefixed_site):
    # The crawler really went through a prefix-stripping proxy: nothing outside it.
    assert httpx.get(prefixed_site.url + "/").status_code == 404
    assert httpx.get(prefixed_site.url + f"/{M}/{S}").status_code == 404


# -- the setting, without a server's root_path; the command line ---------------------
@pytest.mark.parametrize(
    "given,want", [("", ""), ("/", ""), ("/actscope", "/actscope"), ("actscope/", "/actscope"), ("/a/b-1", "/a/b-1")]
)
def test_root_path_setting_is_normalised(web_index, given, want):
    from actscope.app.settings import Settings

    assert Settings(index_file=web_index, root_path=given).root_path == want


@pytest.mark.parametrize("bad", ["/a b", "/a?b", "/a#b", "/<x>", "/caf\u00e9"])
def test_bad_root_path_is_refused(web_index, bad):
    from pydantic import ValidationError

    from actscope.app.settings import Settings

    with pytest.raises(ValidationError, match="root path"):
        Settings(index_file=web_index, root_path=bad)


def test_root_path_setting_alone_prefixes_the_urls(web_index):
    """Under a server that sets no root_path, the app takes it from its settings."""
    from fastapi.testclient import TestClient

    from fixtures_web import make_client

    with make_client(web_index, live=False, root_path=PREFIX) as c:
        soup = BeautifulSoup(c.get(f"/{M}/{S}/0").text, "html.parser")
        assert soup.find("link", rel="alternate")["href"] == f"{PREFIX}/api/{M}/{S}/0"
        assert soup.select_one("a#next-unit")["href"] == f"{PREFIX}/{M}/{S}/1"
        assert soup.select_one("link[rel=stylesheet]")["href"] == f"{PREFIX}/static/style.css"
        assert c.get(f"/api/{M}/{S}/0").json()["links"]["source"] == f"{PREFIX}/{M}/{S}"
        assert c.get("/openapi.json").json()["servers"] == [{"url": PREFIX}]
        assert c.get(f"/{M}/{S}/random", follow_redirects=False).headers["location"].startswith(f"{PREFIX}/{M}/")
        # A server's own root_path wins over the setting.
        other = TestClient(c.app, root_path="/elsewhere")
        assert other.get(f"/api/{M}/{S}/0").json()["links"]["source"] == f"/elsewhere/{M}/{S}"


def test_without_a_prefix_urls_start_at_the_root(client):
    soup = BeautifulSoup(client.get(f"/{M}/{S}/0").text, "html.parser")
    urls = [el.get(a) for el in soup.find_all(True) for a in URL_ATTRS if el.get(a)]
    site = [u for u in urls if not u.startswith(("#", "data:"))]
    assert site and all(u.startswith("/") and not u.startswith(PREFIX) for u in site)
    assert "servers" not in client.get("/openapi.json").json()
    docs = client.get("/docs").text
    assert 'data-openapi="/openapi.json"' in docs and 'src="/static/vendor/swagger-ui-bundle.js"' in docs


def test_serve_passes_the_root_path_to_uvicorn(web_index, monkeypatch, restored_environ):
    import os

    import uvicorn
    from click.testing import CliRunner

    from actscope.cli import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    # The environment is set directly (serve writes it too): restored_environ puts it back.
    env = os.environ
    for var in ("ROOT_PATH", "INDEX_FILE", "DEVICE", "PRELOAD_LIVE", "LIVE_THREADS", "BLAS_THREADS", "WORKERS"):
        env.pop(f"ACTSCOPE_{var}", None)
    env["ACTSCOPE_LIVE"] = "false"
    result = CliRunner().invoke(main, ["serve", str(web_index), "--root-path", "/actscope/"])
    assert result.exit_code == 0, result.output
    assert calls[-1]["root_path"] == "/actscope"
    assert f"http://127.0.0.1:8000/ for a proxy that serves it under {PREFIX}/" in result.output
    # From the environment, as every other setting.
    env["ACTSCOPE_ROOT_PATH"] = "/from-env"
    result = CliRunner().invoke(main, ["serve", str(web_index)])
    assert result.exit_code == 0, result.output
    assert calls[-1]["root_path"] == "/from-env"
    del env["ACTSCOPE_ROOT_PATH"]
    result = CliRunner().invoke(main, ["serve", str(web_index)])
    assert calls[-1]["root_path"] == ""
    # A bad prefix: exit status 2 and one line saying why, before anything is built.
    for command in (["serve", str(web_index)], ["demo", "--out", str(web_index)]):
        result = CliRunner().invoke(main, [*command, "--root-path", "/a b"])
        assert result.exit_code == 2 and "root path '/a b'" in result.output, result.output
    env["ACTSCOPE_ROOT_PATH"] = "/a?b"
    result = CliRunner().invoke(main, ["serve", str(web_index)])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "ACTSCOPE_ROOT_PATH" in result.output
