"""The unit page's routes: dead units, random and neighbours, bands, paging through a
band's stored sample, the URL state its links keep, and the "go to unit" box.
Numbers are checked against the DuckDB file."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from bs4 import BeautifulSoup

from fixtures_models import DEAD_FEATURES

M, SAE = "tiny", "1-res-sae"
NEURON_LEVELS = {(0.0, 0.5): "bottom 50%", (0.5, 0.75): "50–75%", (0.75, 0.9): "75–90%", (0.9, 0.95): "90–95%"}
NEURON_LEVELS |= {(0.95, 0.99): "95–99%", (0.99, 0.999): "99–99.9%", (0.999, 1.0): "top 0.1%"}


def _soup(client, path: str, status: int = 200) -> BeautifulSoup:
    r = client.get(path, follow_redirects=False)
    assert r.status_code == status, (path, r.text[:300])
    return BeautifulSoup(r.text, "html.parser")


def _query(href: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(href).query).items()}


def _dead(db, source: str) -> list[int]:
    rows = db.execute(
        "SELECT unit FROM unit_stats WHERE model = ? AND source = ? AND n_fired = 0 ORDER BY unit", [M, source]
    ).fetchall()
    return [u for (u,) in rows]


# -- dead units ---------------------------------------------------------------------------
def test_the_fixture_has_dead_features(db):
    assert _dead(db, SAE) == sorted(DEAD_FEATURES)


def test_dead_unit_json_and_page(client, db):
    n_tokens = db.execute("SELECT n_tokens FROM models WHERE model = ?", [M]).fetchone()[0]
    unit = DEAD_FEATURES[0]
    data = client.get(f"/api/{M}/{SAE}/{unit}").json()
    assert data["dead"] is True and data["n_dead"] == len(DEAD_FEATURES)
    assert client.get(f"/api/{M}/{SAE}/{unit + 10}").json()["dead"] is False
    soup = _soup(client, f"/{M}/{SAE}/{unit}")
    note = soup.select_one(".dead-note").get_text(" ", strip=True)
    assert f"Never fired on {n_tokens:,} tokens" in note
    # Nothing that reads as data: no histogram, no example sets, no "Top 0", no 1e-09 scale.
    assert soup.select_one(".hist") is None and soup.select_one("nav.tabs") is None
    text = soup.get_text(" ")
    assert "Top 0" not in text and "e-09" not in text and "0.000 to 0.000" not in text
    # The logit effects of its output direction stay, collapsed, said to be what it would write.
    logits = soup.select_one("details.logits")
    assert logits is not None and not logits.has_attr("open") and "if it fired" in logits.get_text()
    assert len(logits.select(".top-logits tr")) == len(data["logits"]["top"])


def test_random_skips_dead_units_unless_asked(client, db):
    dead = set(_dead(db, SAE))
    for prefix in ("", "/api"):
        seen = set()
        for _ in range(40):
            loc = client.get(f"{prefix}/{M}/{SAE}/random", follow_redirects=False).headers["location"]
            seen.add(int(re.search(r"/(\d+)$", loc).group(1)))
        assert seen and not seen & dead
        for _ in range(12):
            loc = client.get(f"{prefix}/{M}/{SAE}/random?dead=1", follow_redirects=False).headers["location"]
            assert int(re.search(r"/(\d+)$", loc).group(1)) in dead
    # A source without dead units says so.
    assert _dead(db, "0-mlp") == []
    r = client.get(f"/api/{M}/0-mlp/random?dead=1")
    assert r.status_code == 404 and "no dead units" in r.json()["error"]["message"]
    # The page links to a random dead unit from its dead count.
    soup = _soup(client, f"/{M}/{SAE}/0")
    assert soup.select_one("a#random-dead")["href"] == f"/{M}/{SAE}/random?dead=1"
    assert soup.select_one("a#random-dead").get_text() == f"{len(dead)} dead units"


def test_prev_next_skip_dead_units_and_any_steps_by_one(client):
    d4, d5 = 4, 5  # adjacent dead features (DEAD_FEATURES)
    assert {d4, d5} <= set(DEAD_FEATURES) and 3 not in DEAD_FEATURES and 6 not in DEAD_FEATURES
    links = client.get(f"/api/{M}/{SAE}/3").json()["links"]
    assert links["next"] == f"/{M}/{SAE}/6" and links["prev"] == f"/{M}/{SAE}/2"
    assert links["next_any"] == f"/{M}/{SAE}/4" and links["prev_any"] == f"/{M}/{SAE}/2"
    assert client.get(f"/api/{M}/{SAE}/6").json()["links"]["prev"] == f"/{M}/{SAE}/3"
    on_dead = client.get(f"/api/{M}/{SAE}/{d5}").json()["links"]
    assert on_dead["prev"] == f"/{M}/{SAE}/3" and on_dead["next"] == f"/{M}/{SAE}/6"
    soup = _soup(client, f"/{M}/{SAE}/3")
    assert soup.select_one("a#next-unit")["href"] == f"/{M}/{SAE}/6"
    assert soup.select_one("a#next-any")["href"] == f"/{M}/{SAE}/4"
    keys = soup.select_one("#keys .shortcuts").get_text(" ")
    assert "J" in keys and "dead" in keys and "?" in keys


# -- bands ------------------------------------------------------------------------------
def _unit_with_empty_band(db) -> tuple[str, int, int]:
    row = db.execute(
        "SELECT b.source, b.unit, b.band FROM bands b JOIN unit_stats u USING (model, source, unit) "
        "WHERE b.model = ? AND b.count = 0 AND u.n_fired > 0 ORDER BY b.source, b.unit, b.band LIMIT 1",
        [M],
    ).fetchone()
    assert row is not None, "the tiny index has a live unit with an empty band"
    return row


def test_empty_bands_get_no_tab_and_band_numbers_stay(client, db):
    source, unit, empty = _unit_with_empty_band(db)
    bands = db.execute(
        "SELECT band, count, lo, hi FROM bands WHERE model = ? AND source = ? AND unit = ? ORDER BY band",
        [M, source, unit],
    ).fetchall()
    soup = _soup(client, f"/{M}/{source}/{unit}")
    offered = [int(_query(a["href"])["band"]) for a in soup.select("nav.tabs a.band-tab")]
    assert offered == [b for b, count, _, _ in reversed(bands) if count > 0]
    assert empty not in offered
    # Each band=N link opens band N of the index: its description and its examples.
    for band, count, lo, hi in bands:
        if count == 0:
            continue
        page = _soup(client, f"/{M}/{source}/{unit}?band={band}")
        info = page.select_one(".set-info").get_text(" ", strip=True)
        assert info.startswith(f"Band B{band},") and f"{count:,} tokens" in info
        stored = db.execute(
            "SELECT act FROM examples WHERE model = ? AND source = ? AND unit = ? AND band = ? ORDER BY rank",
            [M, source, unit, band],
        ).fetchall()
        shown = [float(li.select_one(".ex-act").get_text()) for li in page.select("#examples li.example")]
        assert shown == pytest.approx([a for (a,) in stored][: len(shown)], abs=1e-3) and shown
    # An old link to the empty band says it is empty and offers the others.
    page = _soup(client, f"/{M}/{source}/{unit}?band={empty}")
    assert (
        f"Band B{empty}" in page.select_one(".empty-band").get_text()
        and "empty" in page.select_one(".empty-band").get_text()
    )
    assert [int(_query(a["href"])["band"]) for a in page.select("nav.tabs a.band-tab")] == offered
    assert not page.select("#examples li.example")
    data = client.get(f"/api/{M}/{source}/{unit}?band={empty}").json()
    assert data["shown"]["empty"] is True and data["bands"][empty]["empty"] is True


def test_bands_are_named_by_quantile_range(client, db):
    levels = db.execute("SELECT slug, band_levels FROM sources WHERE model = ?", [M]).fetchall()
    assert dict(levels)["0-mlp"] == [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]
    data = client.get(f"/api/{M}/0-mlp/0").json()
    assert [b["name"] for b in data["bands"]] == [NEURON_LEVELS[(b["q_lo"], b["q_hi"])] for b in data["bands"]]
    soup = _soup(client, f"/{M}/0-mlp/0")
    for a in soup.select("nav.tabs a.band-tab"):
        band = data["bands"][int(_query(a["href"])["band"])]
        assert a.select_one(".tab-name").get_text(" ", strip=True) == f"{band['name']} B{band['band']}"
    help_text = soup.select_one(".band-help").get_text(" ", strip=True)
    assert "B0 is the lowest, B6 the highest" in help_text
    # SAE features: quantiles of the tokens where the feature is active, and said so.
    sae = client.get(f"/api/{M}/{SAE}/0").json()
    assert sae["bands"][-1]["name"] == "top 1%" and sae["bands"][-1]["label"] == "top 1% of active tokens"
    soup = _soup(client, f"/{M}/{SAE}/0")
    names = [a.select_one(".tab-name").get_text(" ", strip=True) for a in soup.select("nav.tabs a.band-tab")]
    assert names and all("of active tokens" in n for n in names)
    assert "B0 is the lowest, B5 the highest" in soup.select_one(".band-help").get_text(" ", strip=True)
    assert "active" not in " ".join(a.get_text() for a in _soup(client, f"/{M}/0-mlp/0").select("nav.tabs a"))


# -- paging through a band's stored sample ---------------------------------------------------
def test_band_pages_walk_the_stored_sample(client, db):
    source, unit, band = db.execute(
        "SELECT source, unit, band FROM examples WHERE model = ? AND band IS NOT NULL "
        "GROUP BY source, unit, band HAVING count(*) >= 3 ORDER BY source, unit, band LIMIT 1",
        [M],
    ).fetchone()
    stored = db.execute(
        "SELECT seq, pos, act FROM examples WHERE model = ? AND source = ? AND unit = ? AND band = ? ORDER BY rank",
        [M, source, unit, band],
    ).fetchall()
    per = 2
    n_pages = -(-len(stored) // per)
    walked = []
    url = f"/{M}/{source}/{unit}?band={band}&per_page={per}"
    for page in range(1, n_pages + 1):
        soup = _soup(client, url)
        assert soup.select_one(".n-stored").get_text() == str(len(stored))
        items = soup.select("#examples li.example")
        walked += [_query(li.select_one("a.full-link")["href"])["open"] for li in items]
        more = soup.select_one(".ex-pager a.more")
        if page < n_pages:
            url = more["href"]
            assert _query(url) == {"band": str(band), "page": str(page + 1), "per_page": str(per)}
        else:
            assert more is None
    assert walked == [f"{s}:{p}" for s, p, _ in stored]
    # The JSON twin: which slice of the band's stored examples each page shows.
    for page in range(1, n_pages + 1):
        data = client.get(f"/api/{M}/{source}/{unit}?band={band}&per_page={per}&page={page}").json()
        sh = data["shown"]
        assert (sh["page"], sh["n_pages"], sh["stored"]) == (page, n_pages, len(stored))
        shown = data["bands"][band]["examples"][sh["first"] : sh["first"] + sh["count"]]
        want = stored[(page - 1) * per : page * per]
        assert [(e["seq"], e["pos"]) for e in shown] == [(s, p) for s, p, _ in want]
        assert [e["act"] for e in shown] == pytest.approx([a for _, _, a in want])
    r = client.get(f"/api/{M}/{source}/{unit}?band={band}&per_page={per}&page={n_pages + 1}")
    assert r.status_code == 404 and "past the last page" in r.json()["error"]["message"]
    assert client.get(f"/api/{M}/{source}/{unit}?per_page=0").status_code == 422
    # Integers written with a zero fraction are the same integers (the schema's integer
    # type admits them, as FastAPI's int parameters do); any other fraction is refused.
    plain = client.get(f"/api/{M}/{source}/{unit}?band={band}&per_page={per}&page=2").json()
    assert client.get(f"/api/{M}/{source}/{unit}?band={band}.0&per_page={per}.00&page=2.0").json() == plain
    for bad in (f"band={band}.5", "page=1.5", "per_page=2.25", "page=1.", "per_page=.0"):
        r = client.get(f"/api/{M}/{source}/{unit}?{bad}")
        assert r.status_code == 422, bad


# -- URL state ----------------------------------------------------------------------------
def test_links_keep_the_state_that_applies(client, db):
    source, unit = "0-mlp", 2
    data = client.get(f"/api/{M}/{source}/{unit}").json()
    band = next(b for b in reversed(data["bands"]) if b["count"] > 0 and len(b["examples"]) >= 2)
    ex = band["examples"][1]
    key = f"{ex['seq']}:{ex['pos']}"
    text = "def f(x):"
    soup = _soup(client, f"/{M}/{source}/{unit}?band={band['band']}&text={text}&open={key}")
    # The expanded example: its full sequence is in the page, its link collapses it.
    items = soup.select("#examples li.example")
    opened = [li for li in items if li.select_one("a.full-link")["aria-expanded"] == "true"]
    assert len(opened) == 1 and opened[0].select_one("a.full-link")["data-open"] == key
    seq_len = len(
        db.execute("SELECT token_ids FROM sequences WHERE model = ? AND seq = ?", [M, ex["seq"]]).fetchone()[0]
    )
    assert len(opened[0].select(".full .full-seq .t")) == seq_len
    assert _query(opened[0].select_one("a.full-link")["href"]) == {"band": str(band["band"]), "text": text}
    other = next(li for li in items if li is not opened[0]).select_one("a.full-link")
    assert _query(other["href"])["open"] == other["data-open"] and _query(other["href"])["text"] == text
    # Band links keep the text, not the expanded example; the live form keeps band and example.
    for a in soup.select("nav.tabs a.tab"):
        assert _query(a["href"]).get("text") == text and "open" not in _query(a["href"])
    hidden = {
        i["name"]: i.get("value") for i in soup.select("#live-form input[type=hidden]") if not i.has_attr("disabled")
    }
    assert hidden == {"band": str(band["band"]), "open": key}
    # The live block's pushed URL carries all of it.
    r = client.get(
        f"/{M}/{source}/{unit}/live?text=hi&band={band['band']}&open={key}",
        headers={"HX-Request": "true", "HX-Target": "live-result"},
    )
    assert _query(r.headers["HX-Push-Url"]) == {"band": str(band["band"]), "open": key, "text": "hi"}
    assert client.get(f"/api/{M}/{source}/{unit}?band={band['band']}&open={key}").json()["open"] == {
        "seq": ex["seq"],
        "pos": ex["pos"],
        "url": f"/{M}/sequences/{ex['seq']}?source={source}&index={unit}&pos={ex['pos']}",
        "on_page": True,
    }
    assert (
        opened[0].select_one("a.seq-page")["href"]
        == f"/{M}/sequences/{ex['seq']}?source={source}&index={unit}&pos={ex['pos']}"
    )
    assert client.get(f"/api/{M}/{source}/{unit}?open=12").status_code == 422
    missing = _soup(client, f"/{M}/{source}/{unit}?band={band['band']}&per_page=1&open={key}")  # on page 2
    assert "not among these" in missing.select_one(".open-missing").get_text()
    assert not missing.select('a.full-link[aria-expanded="true"]')


# -- go to unit -----------------------------------------------------------------------------
def test_go_to_unit_box(client):
    soup = _soup(client, f"/{M}/{SAE}/3")
    form = soup.select_one("form.jump")
    assert form["action"] == f"/{M}/{SAE}/3" and form.select_one("input[name=goto]") is not None
    r = client.get(f"/{M}/{SAE}/3?goto=17&text=hi", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/{M}/{SAE}/17?text=hi"
    assert _soup(client, f"/{M}/{SAE}/3?goto=").select_one(".jump-error") is None  # an empty box asks nothing
    for bad in ("128", "-1", "x"):
        soup = _soup(client, f"/{M}/{SAE}/3?goto={bad}", status=422)
        assert "from 0 to 127" in soup.select_one("form.jump .jump-error").get_text()
        assert soup.select_one("form.jump input[name=goto]")["value"] == bad
        assert soup.select_one(".unit-index").get_text() == "3"  # the page stays, with its examples
        assert soup.select("#examples li.example")


def test_unit_text_reads_crlf_as_newlines(client):
    """A textarea sends CRLF: the unit page reads the visitor's text as try and search do."""
    text = "def f():\n    return 1"
    crlf = client.get(f"/api/{M}/1-mlp/3", params={"text": text.replace("\n", "\r\n")}).json()
    plain = client.get(f"/api/{M}/1-mlp/3", params={"text": text}).json()
    assert crlf["text"] == text
    assert crlf["live"]["token_ids"] == plain["live"]["token_ids"] and crlf["live"]["acts"] == plain["live"]["acts"]
