"""Hostile input, each a test: markup, `javascript:` URLs, right-to-left overrides and NUL
bytes in the corpus (a tiny index built over them), in visitors' text and in query
parameters come out inert: a real browser finds no element, event handler, script or
`javascript:` URL they put there, and shows them as text. Export file names can't be
steered."""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

import pytest

from fixtures_models import TINY_INDEX_OPTIONS, _build_tiny_index
from fixtures_web import ServerThread

pytestmark = [pytest.mark.browser]

RLO = "\u202e"
PAYLOADS = [
    '</script><script>alert("corpus")</script>',
    '"><svg onload=alert(1)>',
    "'><img src=x onerror=alert(2)>",
    "javascript:alert(3)",
    f"invoice{RLO}fdp.exe",
    "nul\x00byte",
    "</textarea></title><x-pwned>bold</x-pwned>",
]
# What each payload shows as on a page (control characters spelled out), short enough
# to fall whole in one 32-token sequence of the tiny model.
SHOWN = [
    "</script><script>",
    '"><svg onload=alert(1)>',
    "'><img src=x onerror=alert(2)>",
    "javascript:alert(3)",
    "invoice<U+202E>fdp.exe",
    "nul<0x00>byte",
    "</textarea></title><x-pwned>",
]
# One string with all of them, as a visitor would type it.
VISITOR = " ".join(PAYLOADS)

M = "tiny"


@pytest.fixture(scope="module")
def hostile_index(tmp_path_factory, tiny_model_dir, tiny_sae_dir):
    """A real index of the tiny model over a corpus made only of the payloads."""
    corpus = tmp_path_factory.mktemp("hostile-corpus")
    for n, payload in enumerate(PAYLOADS):
        lines = [f"{payload} {i} {payload}" for i in range(3)]
        (corpus / f"doc{n}.txt").write_text("\n".join(lines), encoding="utf-8")
    assert TINY_INDEX_OPTIONS["max_tokens"] > 0
    return _build_tiny_index(tmp_path_factory, "hostile", tiny_model_dir, tiny_sae_dir, corpus)


@pytest.fixture(scope="module")
def hostile_site(hostile_index):
    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    app = create_app(Settings(index_file=hostile_index, preload_live=True, root_path=""))
    with ServerThread(app) as server:
        yield server


# What a page must not hold, read from the DOM the browser built.
INSPECT = """() => {
  const bad = [];
  for (const el of document.querySelectorAll("*")) {
    for (const a of el.attributes) {
      if (a.name.startsWith("on")) bad.push(`${el.tagName} ${a.name}`);
      if (/^(href|src|action|formaction|xlink:href|data)$/.test(a.name) && /^\\s*javascript:/i.test(a.value))
        bad.push(`${el.tagName} ${a.name}=${a.value}`);
    }
  }
  for (const s of document.scripts)
    if (!s.src || new URL(s.src).origin !== location.origin || !new URL(s.src).pathname.startsWith("/static/"))
      bad.push(`script ${s.src || s.textContent.slice(0, 40)}`);
  for (const el of document.querySelectorAll("img, iframe, object, embed, style, x-pwned, base"))
    bad.push(el.tagName);
  for (const el of document.querySelectorAll("svg")) if (!el.closest(".hist")) bad.push("svg");
  return {bad, text: document.body.innerText, title: document.title};
}"""


def _visit(page, url: str, dialogs: list[str]) -> dict:
    resp = page.goto(url)
    assert resp is not None and resp.status < 500, (url, resp and resp.status)
    found = page.evaluate(INSPECT)
    assert found["bad"] == [], (url, found["bad"])
    assert dialogs == [], (url, dialogs)
    # A right-to-left override shown raw would turn the text after it around.
    assert RLO not in found["text"] + found["title"], url
    return found


@pytest.fixture
def hostile_page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    context.close()


def test_corpus_payloads_are_shown_as_text(hostile_page, hostile_site, hostile_index):
    import duckdb

    con = duckdb.connect(str(hostile_index), read_only=True)
    n_seq = con.execute("SELECT count(*) FROM sequences").fetchone()[0]
    units = con.execute(
        "SELECT DISTINCT source, unit FROM examples WHERE band IS NULL ORDER BY source, unit LIMIT 4"
    ).fetchall()
    con.close()
    base = hostile_site.url
    shown = ""
    for seq in range(n_seq):
        shown += _visit(hostile_page, f"{base}/{M}/sequences/{seq}", hostile_page.dialogs)["text"]
    # Every payload is on the pages, as the text it is: markup as characters, the
    # invisible control characters spelled out.
    for text in SHOWN:
        assert text in shown, text
    assert RLO not in shown and "\x00" not in shown
    for source, unit in units:
        _visit(hostile_page, f"{base}/{M}/{source}/{unit}", hostile_page.dialogs)
        _visit(hostile_page, f"{base}/embed/{M}/{source}/{unit}", hostile_page.dialogs)
        _visit(hostile_page, f"{base}/{M}/{source}", hostile_page.dialogs)
    for token in ("script", "svg", "javascript", "alert"):
        _visit(hostile_page, f"{base}/{M}/search?{urlencode({'token': token})}", hostile_page.dialogs)


def test_visitor_text_is_inert(hostile_page, hostile_site):
    base = hostile_site.url
    q = urlencode({"text": VISITOR})
    pages = [
        f"{base}/{M}/try?{q}",
        f"{base}/{M}/0-mlp/0?{q}",
        f"{base}/{M}/search?{q}&{urlencode({'token': PAYLOADS[1]})}",
    ]
    for url in pages:
        found = _visit(hostile_page, url, hostile_page.dialogs)
        # The visitor's text is back in the form as they typed it (HTML has no NUL
        # character: a browser reads it as U+FFFD).
        typed = hostile_page.locator("textarea[name=text]").first.input_value()
        assert typed.strip() == VISITOR.replace("\x00", "\ufffd"), url
        assert "alert" not in found["title"], url
    # Live typing on a unit page: the htmx swap of the live block adds nothing either.
    hostile_page.goto(f"{base}/{M}/0-mlp/0")
    hostile_page.fill("#live-text", VISITOR)
    hostile_page.click("#live-form button")
    hostile_page.wait_for_selector("#live-result .live-tokens")
    assert hostile_page.evaluate(INSPECT)["bad"] == []
    assert hostile_page.dialogs == []


@pytest.mark.parametrize("payload", PAYLOADS)
def test_query_parameters_are_inert(hostile_page, hostile_site, payload):
    """Every parameter a page reads, and the path itself, set to a payload: the error
    or page that answers holds it only as text (in messages, form values and links)."""
    base = hostile_site.url
    p = quote(payload, safe="")
    urls = [
        f"{base}/{M}/0-mlp?" + urlencode({"q": payload, "sort": payload, "min_pct": payload, "goto": payload}),
        f"{base}/{M}/0-mlp/0?" + urlencode({"band": payload, "page": payload, "open": payload}),
        f"{base}/{M}/0-mlp/0?" + urlencode({"goto": payload, "text": payload}),
        f"{base}/{M}/sequences/0?" + urlencode({"source": payload, "index": 0}),
        f"{base}/{M}/try?" + urlencode({"text": "x", "source": payload, "k": payload}),
        f"{base}/{M}/search?" + urlencode({"token": payload, "source": payload, "text_source": payload}),
        f"{base}/{M}/{p}",
        f"{base}/{p}",
        f"{base}/embed/{M}/{p}/0",
    ]
    for url in urls:
        _visit(hostile_page, url, hostile_page.dialogs)


def test_json_answers_are_json(hostile_site):
    """The API echoes the payloads only inside JSON, served as JSON (nosniff: a browser
    never reads it as HTML)."""
    import httpx

    base = hostile_site.url
    for url in (
        f"{base}/api/{M}/try?" + urlencode({"text": VISITOR}),
        f"{base}/api/{M}/search?" + urlencode({"token": PAYLOADS[0], "text": VISITOR}),
        f"{base}/api/{M}/0-mlp?" + urlencode({"q": PAYLOADS[1]}),
        f"{base}/api/{M}/{quote(PAYLOADS[2], safe='')}",
    ):
        resp = httpx.get(url, timeout=60)
        assert resp.status_code < 500, url
        assert resp.headers["content-type"] == "application/json", url
        assert resp.headers["x-content-type-options"] == "nosniff"
        json.loads(resp.text)


@pytest.mark.parametrize(
    "path",
    [
        f"/api/{M}/0-mlp/export.jsonl%22%3B%20filename%3Devil.sh",
        f"/api/{M}/0-mlp%22%3B%20filename%3D%22evil.sh/export.jsonl",
        f"/api/{M}/..%2F..%2Fetc%2Fpasswd/export.parquet",
        f"/api/{M}/0-mlp%0D%0AContent-Disposition%3A%20inline/export.jsonl",
        f"/api/{quote(PAYLOADS[1], safe='')}/0-mlp/export.jsonl",
    ],
)
def test_export_file_names_cannot_be_steered(client, path):
    """A download's name is the model's and source's names in the index and the format:
    a path naming anything else is 404, with no Content-Disposition."""
    resp = client.get(path)
    assert resp.status_code == 404
    assert "content-disposition" not in resp.headers


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_file_name_is_the_index_names(client, fmt):
    from email.message import Message

    with client.stream("GET", f"/api/{M}/0-mlp/export.{fmt}") as resp:
        assert resp.status_code == 200
        msg = Message()
        msg["content-disposition"] = resp.headers["content-disposition"]
        assert msg.get_content_disposition() == "attachment"
        assert msg.get_filename() == f"{M}-0-mlp.{fmt}"


HUGE = [2**63 - 1, 2**63, 2**64, 10**30, -(2**63) - 1]
INT_URLS = [
    "/tiny/0-mlp/{n}",
    "/api/tiny/0-mlp/{n}",
    "/embed/tiny/0-mlp/{n}",
    "/tiny/0-mlp/{n}/live?text=a",
    "/tiny/sequences/{n}",
    "/api/tiny/sequences/{n}",
    "/tiny/0-mlp?page={n}",
    "/api/tiny/0-mlp?page={n}",
    "/api/tiny/0-mlp?per_page={n}",
    "/tiny/0-mlp?goto={n}",
    "/tiny/0-mlp/1?band={n}",
    "/tiny/0-mlp/1?page={n}",
    "/api/tiny/0-mlp/1?per_page={n}",
    "/tiny/0-mlp/1?goto={n}",
    "/tiny/try?text=ab&pos={n}",
    "/api/tiny/try?text=ab&pos={n}",
    "/api/tiny/try?text=ab&k={n}",
    "/tiny/search?token=a&page={n}",
    "/api/tiny/search?token=a&per_page={n}",
    "/tiny/sequences/1?source=0-mlp&index={n}",
]


@pytest.mark.parametrize("n", HUGE)
def test_integers_at_2_63_and_beyond_are_404_or_422(client, n):
    """Integers past what DuckDB's BIGINT holds (and just inside it) are an unknown
    thing (404) or invalid input (422), never a server error or a page."""
    for url in INT_URLS:
        resp = client.get(url.format(n=n))  # /live redirects a plain request to the unit page
        assert resp.status_code in (404, 422), (url, resp.status_code, resp.text[:200])
    for body in ({"text": "a", "source": "0-mlp", "index": n}, {"text": "a", "source": "0-mlp", "k": n}):
        resp = client.post("/api/tiny/activations", json=body)
        assert resp.status_code in (404, 422), (body, resp.status_code)
        assert resp.json()["error"]["status"] == resp.status_code
