"""The source page's unit table: filters (percent on the page, fractions in the API),
errors next to the form, dead units, the columns a source has, page jump and go-to-unit.

Expected rows are computed from the index file with SQL, not through the app."""

from __future__ import annotations

import re
import shutil
from urllib.parse import parse_qs, urlsplit

import duckdb
import pytest
from bs4 import BeautifulSoup

from fixtures_web import make_client

M, NEURONS, SAE = "tiny", "0-mlp", "1-res-sae"
DEAD = [3, 40, 77, 100]  # SAE features made dead in `dead_index`


@pytest.fixture(scope="module")
def dead_index(web_index, tmp_path_factory):
    """A copy of the test index where SAE features DEAD never fired: their statistics
    say so (density 0) and they have no examples or bands, as the indexer writes them."""
    path = tmp_path_factory.mktemp("dead") / "dead.duckdb"
    shutil.copyfile(web_index, path)
    con = duckdb.connect(str(path))
    units = ", ".join(map(str, DEAD))
    con.execute(
        f"UPDATE unit_stats SET max = 0, min = 0, mean = 0, std = 0, density = 0, n_fired = 0 "
        f"WHERE source = '{SAE}' AND unit IN ({units})"
    )
    for table in ("examples", "bands"):
        con.execute(f"DELETE FROM {table} WHERE source = '{SAE}' AND unit IN ({units})")
    con.close()
    return path


@pytest.fixture(scope="module")
def dclient(dead_index):
    with make_client(dead_index) as c:
        yield c


@pytest.fixture(scope="module")
def db(dead_index):
    con = duckdb.connect(str(dead_index), read_only=True)
    yield con
    con.close()


def densities(db, source: str) -> dict[int, float]:
    return dict(db.execute("SELECT unit, density FROM unit_stats WHERE source = ?", [source]).fetchall())


def page_units(html: str) -> list[int]:
    soup = BeautifulSoup(html, "html.parser")
    return [int(a.get_text()) for a in soup.select("table.units a.unit-link")]


def all_page_units(client, url: str) -> list[int]:
    """Every unit the page lists, following its next links."""
    units: list[int] = []
    while url:
        soup = BeautifulSoup(client.get(url).text, "html.parser")
        units += [int(a.get_text()) for a in soup.select("table.units a.unit-link")]
        nxt = soup.select_one("a[rel=next]")
        url = nxt["href"] if nxt else None
    return units


# -- filters ---------------------------------------------------------------------------
def test_page_density_filter_is_in_percent_and_empty_is_no_bound(dclient, db):
    dens = densities(db, NEURONS)
    # The form as a browser sends it: an empty upper bound.
    r = dclient.get(f"/{M}/{NEURONS}?sort=unit&order=asc&q=&min_pct=50&max_pct=&per_page=500")
    assert r.status_code == 200
    assert page_units(r.text) == sorted(u for u, d in dens.items() if d >= 0.5)
    both_empty = dclient.get(f"/{M}/{NEURONS}?sort=unit&order=asc&min_pct=&max_pct=&per_page=500")
    assert both_empty.status_code == 200 and page_units(both_empty.text) == sorted(dens)
    # The box shows the bound as typed, in percent.
    soup = BeautifulSoup(r.text, "html.parser")
    assert soup.select_one("input[name=min_pct]")["value"] == "50"


def test_api_density_is_a_fraction_and_empty_is_no_bound(dclient, db):
    dens = densities(db, NEURONS)
    data = dclient.get(f"/api/{M}/{NEURONS}?sort=unit&order=asc&min_density=0.5&max_density=&per_page=500").json()
    assert [u["index"] for u in data["units"]] == sorted(u for u, d in dens.items() if d >= 0.5)
    assert data["min_density"] == 0.5 and data["max_density"] is None
    # 50 is no fraction: refused, with what the API expects.
    r = dclient.get(f"/api/{M}/{NEURONS}?min_density=50")
    assert r.status_code == 422 and "fraction" in r.json()["error"]["message"]
    # The page announces the JSON twin of what it shows, in fractions.
    soup = BeautifulSoup(dclient.get(f"/{M}/{NEURONS}?min_pct=50").text, "html.parser")
    twin = parse_qs(urlsplit(soup.select_one("link[rel=alternate]")["href"]).query)
    assert twin["min_density"] == ["0.5"]


def test_openapi_documents_the_table_parameters(dclient):
    spec = dclient.get("/openapi.json").json()
    table = {p["name"]: p for p in spec["paths"]["/api/{model}/{source}"]["get"]["parameters"]}
    for name in ("min_density", "max_density"):
        schema = table[name]["schema"]
        kinds = {s.get("type") for s in schema["anyOf"]}
        assert kinds >= {"number", "string"}, schema  # a number, or empty
        assert {"type": "string", "maxLength": 0} in schema["anyOf"]
        assert "fraction" in table[name]["description"]
    assert table["sort"]["schema"]["enum"] == ["unit", "max", "mean", "density", "cos_in_out"]
    assert table["order"]["schema"]["enum"] == ["asc", "desc"]
    assert "dead" in table["hide_dead"]["description"] and "SAE" in table["hide_dead"]["description"]
    for name in ("sort", "order", "page", "per_page", "q"):
        assert table[name].get("description"), name


@pytest.mark.parametrize(
    "query,field,words",
    [
        ("min_pct=lots&max_pct=", "min_pct", "not 'lots'"),
        ("min_pct=60&max_pct=10", "min_pct", "is above density ≤ (max_pct)"),
        ("max_pct=150", "max_pct", "0 to 100"),
        ("hide_dead=maybe", "hide_dead", "true or false"),
    ],
)
def test_bad_filter_is_shown_next_to_the_form_and_kept(dclient, db, query, field, words):
    r = dclient.get(f"/{M}/{NEURONS}?sort=unit&order=asc&q=x&{query}")
    assert r.status_code == 422
    soup = BeautifulSoup(r.text, "html.parser")
    message = soup.select_one("form.filters #filter-error")
    assert message is not None and not message.has_attr("hidden")
    assert field in message.get_text() and words in message.get_text()
    # The table is still there (without the bad filter), and nothing typed is lost.
    assert soup.select("table.units tbody tr")
    typed = parse_qs(query, keep_blank_values=True)
    for name, (value,) in typed.items():
        box = soup.select_one(f"form.filters [name={name}]")
        if box.name == "input":
            assert box["value"] == value
    assert soup.select_one("form.filters input[name=q]")["value"] == "x"


def test_htmx_filter_error_comes_back_in_the_swapped_block(dclient):
    r = dclient.get(f"/{M}/{NEURONS}?min_pct=abc", headers={"HX-Request": "true", "HX-Target": "units"})
    assert r.status_code == 200 and "<html" not in r.text  # htmx swaps only 2xx answers
    soup = BeautifulSoup(r.text, "html.parser")
    assert "not 'abc'" in soup.select_one("#filter-error").get_text()


# -- dead units ------------------------------------------------------------------------
def test_dead_units_hidden_by_default_where_the_kind_says_so(dclient, db):
    dens = densities(db, SAE)
    dead = sorted(u for u, d in dens.items() if d == 0)  # DEAD, and any the tiny SAE has itself
    assert set(DEAD) <= set(dead)
    alive = sorted(u for u, d in dens.items() if d > 0)
    sae = dclient.get(f"/api/{M}/{SAE}?sort=unit&order=asc&per_page=500").json()
    assert sae["hide_dead"] is True and sae["n_dead"] == len(dead)
    assert [u["index"] for u in sae["units"]] == alive
    shown = dclient.get(f"/api/{M}/{SAE}?sort=unit&order=asc&per_page=500&hide_dead=false").json()
    assert [u["index"] for u in shown["units"]] == sorted(dens)
    # Neurons: shown by default.
    neurons = dclient.get(f"/api/{M}/{NEURONS}?per_page=500").json()
    assert neurons["hide_dead"] is False and neurons["total"] == len(densities(db, NEURONS))
    # The page: the dead count, and a link that shows them, keeping the sort.
    html = dclient.get(f"/{M}/{SAE}?sort=unit&order=asc&per_page=500").text
    soup = BeautifulSoup(html, "html.parser")
    assert page_units(html) == alive
    assert f"{len(dead)} dead" in soup.select_one(".hook").get_text()
    toggle = soup.select_one("a.dead-toggle")
    assert "hide_dead=false" in toggle["href"] and "sort=unit" in toggle["href"]
    assert page_units(dclient.get(toggle["href"]).text) == sorted(dens)
    assert soup.select_one("select[name=hide_dead] option[selected]")["value"] == "true"


# -- columns ---------------------------------------------------------------------------
def test_only_the_columns_a_source_has(dclient, db):
    assert db.execute("SELECT count(cos_in_out) FROM unit_stats WHERE source = ?", [SAE]).fetchone()[0] == 0
    headers = {
        src: [
            th["class"][-1]
            for th in BeautifulSoup(dclient.get(f"/{M}/{src}").text, "html.parser").select("table.units th")
        ]
        for src in (NEURONS, SAE)
    }
    assert "col-cos_in_out" in headers[NEURONS] and "col-cos_in_out" not in headers[SAE]
    assert headers[SAE][:2] == ["col-unit", "col-top-token"]  # what a phone shows first
    assert [c["key"] for c in dclient.get(f"/api/{M}/{SAE}").json()["columns"]] == ["unit", "max", "mean", "density"]
    r = dclient.get(f"/api/{M}/{SAE}?sort=cos_in_out")
    assert r.status_code == 404 and "cos_in_out" in r.json()["error"]["message"]
    page = BeautifulSoup(dclient.get(f"/{M}/{SAE}?sort=cos_in_out").text, "html.parser")
    assert "cannot be sorted by it" in page.select_one("#filter-error").get_text()
    # Short explanations in place.
    soup = BeautifulSoup(dclient.get(f"/{M}/{NEURONS}").text, "html.parser")
    assert "above 0" in soup.select_one("th.col-density")["title"]
    assert "input and output weight" in soup.select_one("th.col-cos_in_out")["title"]
    assert "density" in soup.select_one("p.legend").get_text()


def test_sorted_like_a_sort_in_sql(dclient, db):
    for col in ("max", "mean", "density", "cos_in_out"):
        for order in ("asc", "desc"):
            want = [
                u
                for (u,) in db.execute(
                    f"SELECT unit FROM unit_stats WHERE source = ? ORDER BY {col} {order}, unit", [NEURONS]
                ).fetchall()
            ]
            got = dclient.get(f"/api/{M}/{NEURONS}?sort={col}&order={order}&per_page=500").json()
            assert [u["index"] for u in got["units"]] == want, (col, order)


# -- state in links ------------------------------------------------------------------------
def test_every_link_keeps_the_state(dclient):
    url = f"/{M}/{NEURONS}?sort=density&order=asc&q=e&min_pct=10&max_pct=90&per_page=5"
    soup = BeautifulSoup(dclient.get(url).text, "html.parser")
    want = {"q": ["e"], "min_pct": ["10"], "max_pct": ["90"], "per_page": ["5"]}
    for a in soup.select("table.units th a"):
        query = parse_qs(urlsplit(a["href"]).query)
        assert {k: query.get(k) for k in want} == want, a["href"]
    nxt = parse_qs(urlsplit(soup.select_one("a[rel=next]")["href"]).query)
    assert nxt["sort"] == ["density"] and nxt["order"] == ["asc"] and nxt["page"] == ["2"]
    assert {k: nxt.get(k) for k in want} == want
    # The filter form's hidden fields carry the current sort (the htmx swap renders it anew).
    form = soup.select_one("form.filters")
    assert form.select_one("input[name=sort]")["value"] == "density"
    assert form.select_one("input[name=order]")["value"] == "asc"
    jump = {i["name"]: i["value"] for i in soup.select("form.page-jump input[type=hidden]")}
    assert jump == {"sort": "density", "order": "asc", "q": "e", "min_pct": "10", "max_pct": "90", "per_page": "5"}


# -- page jump and go to unit ------------------------------------------------------------
def test_page_jump(dclient, db):
    order = [
        u
        for (u,) in db.execute("SELECT unit FROM unit_stats WHERE source = ? ORDER BY max DESC, unit", [SAE]).fetchall()
    ]
    alive = {u for u, d in densities(db, SAE).items() if d > 0}
    order = [u for u in order if u in alive]
    html = dclient.get(f"/{M}/{SAE}?per_page=10&page=4").text
    assert page_units(html) == order[30:40]
    soup = BeautifulSoup(html, "html.parser")
    n_pages = -(-len(order) // 10)
    assert f"of {n_pages}" in soup.select_one("form.page-jump").get_text()
    assert soup.select_one("form.page-jump input[name=page]")["value"] == "4"
    r = dclient.get(f"/{M}/{SAE}?per_page=10&page=999")
    assert r.status_code == 422
    soup = BeautifulSoup(r.text, "html.parser")
    assert f"past the last page ({n_pages})" in soup.select_one("form.page-jump #page-error").get_text()
    assert soup.select_one("form.page-jump input[name=page]")["value"] == "999"
    assert page_units(r.text) == order[:10]  # the first page, meanwhile


def test_go_to_unit(dclient):
    r = dclient.get(f"/{M}/{SAE}?goto=42", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/{M}/{SAE}/42"
    for bad, words in [("128", "units 0 to 127"), ("-1", "units 0 to 127"), ("x7", "not 'x7'")]:
        r = dclient.get(f"/{M}/{SAE}?goto={bad}", follow_redirects=False)
        assert r.status_code == 422
        soup = BeautifulSoup(r.text, "html.parser")
        assert words in soup.select_one("form.goto #unit-error").get_text()
        assert soup.select_one("form.goto input[name=goto]")["value"] == bad
        assert soup.select("table.units tbody tr")
    # A bad unit number keeps the table's view.
    r = dclient.get(f"/{M}/{SAE}?sort=unit&order=asc&per_page=10&page=3&hide_dead=false&goto=999")
    assert r.status_code == 422 and page_units(r.text) == list(range(20, 30))
    kept = {i["name"]: i["value"] for i in BeautifulSoup(r.text, "html.parser").select("form.goto input[type=hidden]")}
    assert kept == {"sort": "unit", "order": "asc", "hide_dead": "false", "per_page": "10", "page": "3"}


def test_bad_input_never_500(dclient):
    for query in [
        "page=0",
        "page=1e3",
        "per_page=0",
        "per_page=9999",
        "sort=%00",
        "order=up",
        "min_pct=nan",
        "max_pct=-1%25",
    ]:
        r = dclient.get(f"/{M}/{NEURONS}?{query}")
        assert r.status_code == 422, query
        assert re.search(
            r"must|past|not", BeautifulSoup(r.text, "html.parser").select_one(".form-error:not([hidden])").get_text()
        )
