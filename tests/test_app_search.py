"""Token search, text search and the try page, checked against the DuckDB file (SQL in
tests/search_reference.py, independent of the store's lookup) and single-source live runs."""

from __future__ import annotations

import pytest
from bs4 import BeautifulSoup
from search_reference import expected_hits, one_unit_token, spaced_word

from actscope.app import schemas

M = "tiny"
TEXT = "def wrap(text, width):\n    return text.split()"


@pytest.fixture(scope="module")
def word(db) -> str:
    return spaced_word(db)


def _hits(data) -> list[tuple[str, int, int, float]]:
    return [(u["source"], u["index"], u["n_top_examples"], pytest.approx(u["best_act"])) for u in data["units"]]


@pytest.mark.parametrize("spelling", ["plain", "leading space", "upper case"])
def test_token_search_finds_every_spelling_ranked_by_matching_examples(client, db, word, spelling):
    query = {"plain": word, "leading space": " " + word, "upper case": word.upper()}[spelling]
    data = client.get(f"/api/{M}/search", params={"token": query, "per_page": 500}).json()
    schemas.SearchOut.model_validate(data)
    expected = expected_hits(db, word)
    assert len(expected) > 1 and data["total"] == len(expected)
    assert _hits(data) == expected
    # Which spelling matched: the variants, and each unit's strongest matching example.
    labels = {v["token"]: v["match"] for v in data["variants"]}
    if spelling == "plain":
        assert labels[word] == "exact" and labels[" " + word] == "with leading space"
    elif spelling == "leading space":
        assert labels[" " + word] == "exact" and labels[word] == "without leading space"
    else:
        assert labels[word] == "case" and labels[" " + word] == "with leading space, case"
    for u in data["units"]:
        assert u["match"] == labels[u["token"]]
        sn = u["snippet"]
        assert sn["tokens"][sn["focus"]] == u["token"] and sn["act"] == pytest.approx(u["best_act"])
        assert sn["acts"][sn["focus"]] == pytest.approx(u["best_act"])
    assert sum(v["n_units"] for v in data["variants"]) == data["total"]


def test_token_search_top_token_is_the_unit_s_strongest_example(client, db, word):
    data = client.get(f"/api/{M}/search", params={"token": word, "per_page": 5}).json()
    for u in data["units"]:
        top = client.get(f"/api/{M}/{u['source']}/{u['index']}").json()["top"][0]
        assert (u["top_token"], u["top_token_id"]) == (top["tokens"][top["focus"]], top["token_ids"][top["focus"]])


def test_token_search_pages_through_every_result(client, db, word):
    expected = expected_hits(db, word)
    seen, url, pages = [], f"/api/{M}/search?token={word}&per_page=3", 0
    while url:
        data = client.get(url).json()
        pages += 1
        assert data["total"] == len(expected) and data["page"] == pages
        assert data["n_pages"] == -(-len(expected) // 3)
        seen += _hits(data)
        url = data["next_page"] and "/api" + data["next_page"]
    assert seen == expected and pages > 1
    last = client.get(f"/api/{M}/search", params={"token": word, "per_page": 3, "page": pages}).json()
    assert last["next_page"] is None and f"page={pages - 1}" in last["prev_page"]
    r = client.get(f"/api/{M}/search", params={"token": word, "per_page": 3, "page": pages + 1})
    assert r.status_code == 404 and "past the last page" in r.json()["error"]["message"]
    # The page: the total, and previous/next links keeping the query (and the text search's).
    html = client.get(
        f"/{M}/search", params={"token": " " + word, "per_page": 3, "page": 2, "text": "x = 1", "text_source": "1-mlp"}
    )
    soup = BeautifulSoup(html.text, "html.parser")
    assert soup.select_one(".token-hits .count").get_text().startswith(f"{len(expected)} units match")
    nxt, prev = soup.select_one(".pager a[rel=next]")["href"], soup.select_one(".pager a[rel=prev]")["href"]
    for link in (nxt, prev):
        assert f"token=+{word}&" in link and "per_page=3" in link and "text=x+%3D+1" in link
    assert "&page=3" in nxt and "&page=" not in prev  # page 1 is the page without a number
    rows = soup.select(".search-hits tbody tr")
    assert [r.select_one("a.unit-link").get_text() for r in rows] == [f"{s}/{u}" for s, u, _, _ in expected[3:6]]


def test_token_search_in_one_source(client, db, word):
    source = expected_hits(db, word)[0][0]
    data = client.get(f"/api/{M}/search", params={"token": word, "source": source, "per_page": 500}).json()
    assert _hits(data) == expected_hits(db, word, source) and {u["source"] for u in data["units"]} == {source}


def test_search_page_says_one_unit_matches(client, db):
    """Counts are pluralised: a token with exactly one matching unit."""
    token = one_unit_token(db)
    soup = BeautifulSoup(client.get(f"/{M}/search", params={"token": token}).text, "html.parser")
    assert soup.select_one(".token-hits .count").get_text().strip() == "1 unit matches"
    assert "(exact: 1 unit)" in soup.select_one(".variants").get_text()


def test_text_search_reads_crlf_as_newlines_and_keeps_each_form_s_state(client):
    crlf = TEXT.replace("\n", "\r\n")
    data = client.get(f"/api/{M}/search", params={"text": crlf, "text_source": "1-mlp"}).json()
    plain = client.get(f"/api/{M}/search", params={"text": TEXT, "text_source": "1-mlp"}).json()
    assert data["live"]["token_ids"] == plain["live"]["token_ids"] and data["text"] == TEXT
    assert not any("\r" in t for t in data["live"]["tokens"])
    soup = BeautifulSoup(client.get(f"/{M}/search", params={"text": crlf, "text_source": "1-mlp"}).text, "html.parser")
    # (A browser drops the newline that opens a textarea; html.parser keeps it.)
    assert soup.select_one("textarea[name=text]").get_text() == "\n" + TEXT
    # The text form shows its source; the token form keeps its own ("all sources").
    assert soup.select_one("select[name=text_source] option[selected]")["value"] == "1-mlp"
    assert soup.select_one("select[name=source] option[selected]") is None
    # Unit links keep the visitor's text.
    links = [a["href"] for a in soup.select(".text-hits a.unit-link")]
    assert len(links) == 20 and all(h.startswith(f"/{M}/1-mlp/") and "text=def+wrap" in h for h in links)


def test_try_lists_the_top_units_of_every_source(client):
    data = client.get(f"/api/{M}/try", params={"text": TEXT, "pos": 2, "k": 3}).json()
    schemas.TryOut.model_validate(data)
    sources = [s["slug"] for s in client.get(f"/api/{M}").json()["sources"]]
    assert [b["source"] for b in data["sources"]] == sources and len(sources) == 3
    for b in data["sources"]:
        # The same units as the single-source live API.
        one = client.post(f"/api/{M}/activations", json={"text": TEXT, "source": b["source"], "k": 3}).json()
        assert [[u["index"] for u in t] for t in b["top"]] == [[u["index"] for u in t] for t in one["top"]]
    soup = BeautifulSoup(client.get(f"/{M}/try", params={"text": TEXT, "pos": 2, "k": 3}).text, "html.parser")
    lists = soup.select(".token-units .try-source")
    assert [s.select_one("h3").get_text() for s in lists] == sources
    for block, b in zip(lists, data["sources"]):
        links = block.select("a.unit-link")
        assert [a.get_text() for a in links] == [f"{b['source']}/{u['index']}" for u in b["top"][2]]
        assert all("text=def+wrap" in a["href"] for a in links)
    # Each token's tooltip names every source's top unit on it, with its activation.
    tok = soup.select(".try-tokens a.t")[2]
    for b in data["sources"]:
        u = b["top"][2][0]
        assert f"{b['source']}/{u['index']} {u['act']:.3f}" in tok["data-units"]
        assert f"{b['source']}/{u['index']}" in tok["title"]
    # The token links keep the state: text, k.
    assert "k=3" in tok["href"] and "pos=2" in tok["href"] and "text=def+wrap" in tok["href"]
    assert soup.select_one("input[name=k]")["value"] == "3"


def test_try_leaves_out_control_sources(client, monkeypatch):
    from actscope.indexer import kinds

    sae = next(s for s in client.get(f"/api/{M}").json()["sources"] if s["slug"] == "1-res-sae")
    monkeypatch.setattr(type(kinds.get(sae["kind"])), "control", True)  # a control kind, as a later one is
    data = client.get(f"/api/{M}/try", params={"text": TEXT}).json()
    assert [b["source"] for b in data["sources"]] == ["0-mlp", "1-mlp"]
    soup = BeautifulSoup(client.get(f"/{M}/try", params={"text": TEXT}).text, "html.parser")
    assert [o["value"] for o in soup.select("select[name=source] option")] == ["0-mlp", "1-mlp"]
    assert [h.get_text() for h in soup.select(".overall-units h3")] == ["0-mlp", "1-mlp"]


def test_try_reads_crlf_as_newlines(client):
    crlf = client.get(f"/api/{M}/try", params={"text": TEXT.replace("\n", "\r\n")}).json()
    plain = client.get(f"/api/{M}/try", params={"text": TEXT}).json()
    assert crlf["token_ids"] == plain["token_ids"] and crlf["text"] == TEXT


def test_token_search_reads_the_same_from_sql_as_from_memory(web_index, client, word):
    """An index too large for memory answers from SQL: the same results and snippets."""
    from fixtures_web import make_client

    params = {"token": word, "per_page": 500}
    with make_client(web_index, resident_mb=0, live=False) as sql_client:
        assert not sql_client.app.state.catalog.store(M).resident
        assert (
            sql_client.get(f"/api/{M}/search", params=params).json()
            == client.get(f"/api/{M}/search", params=params).json()
        )


def test_try_page_shows_an_error_next_to_the_form_and_keeps_its_state(client):
    r = client.get(f"/{M}/try", params={"text": "   ", "source": "1-mlp", "k": 7})
    soup = BeautifulSoup(r.text, "html.parser")
    assert r.status_code == 422 and "empty" in soup.select_one("#try-result .error-message").get_text()
    assert soup.select_one("select[name=source] option[selected]")["value"] == "1-mlp"
    assert soup.select_one("input[name=k]")["value"] == "7"
    r = client.get(f"/{M}/try", params={"text": TEXT, "pos": 999})
    assert r.status_code == 422 and "pos must be between 0 and" in r.text
    assert BeautifulSoup(r.text, "html.parser").select_one("textarea[name=text]").get_text() == "\n" + TEXT
    # A bad k: said in our words next to the form, which keeps the text and what was typed.
    for k, message in (("abc", "k must be a whole number, not 'abc'."), ("0", "k must be between 1 and 100.")):
        r = client.get(f"/{M}/try", params={"text": TEXT, "source": "1-mlp", "k": k})
        soup = BeautifulSoup(r.text, "html.parser")
        assert r.status_code == 422 and soup.select_one("#try-result .error-message").get_text() == message
        assert soup.select_one("textarea[name=text]").get_text() == "\n" + TEXT
        assert (
            soup.select_one("input[name=k]")["value"] == k
            and soup.select_one("input[name=k]")["aria-invalid"] == "true"
        )
        assert soup.select_one("select[name=source] option[selected]")["value"] == "1-mlp"


def test_token_spellings_with_each_leading_space_marker():
    from actscope.indexer.store.token_variants import TokenVariants

    vocab = ["a", " a", "A", "\u0120a", "\u2581A", " ", "  ", "ab"]
    labels = lambda q: {v.token: v.label for v in TokenVariants(vocab).match(q)}  # noqa: E731
    assert labels("a") == {
        "a": "exact",
        "A": "case",
        " a": "with leading space",
        "\u0120a": "with leading space",
        "\u2581A": "with leading space, case",
    }
    assert labels(" a") == {
        " a": "exact",
        "a": "without leading space",
        "A": "without leading space, case",
        "\u0120a": "leading space as \u0120",
        "\u2581A": "leading space as \u2581, case",
    }
    assert labels(" ") == {" ": "exact", "  ": "with leading space"}  # a space alone is a word
    assert [v.token for v in TokenVariants(vocab).match("A")][0] == "A" and labels("zz") == {}


def test_a_page_of_the_ranking_is_that_page_of_the_full_sort():
    """FocusResult ranks only as far as a page needs (one integer key, then the ties):
    every page equals the same slice of the full sort by count, activation, source and
    unit, with ties, negative activations and -0.0 among them."""
    import numpy as np

    from actscope.indexer.store.token_search import FocusTable

    rng = np.random.default_rng(0)
    n = 3000
    acts = rng.choice(np.array([-1.5, -0.0, 0.0, 0.25, 2.0, 7.5], dtype=np.float32), n)
    acts[::7] = rng.normal(size=len(acts[::7])).astype(np.float32)
    table = FocusTable(
        ["a", "b", "c"],
        rng.integers(0, 4, n).astype(np.int32),  # focus tokens
        rng.integers(0, 3, n).astype(np.int32),
        rng.permutation(n).astype(np.int32),  # units, each on one token
        rng.integers(1, 4, n).astype(np.int32),
        acts,
        rng.integers(0, 5, n).astype(np.int32),
    )
    found = table.search([0, 1, 2, 3])
    full = np.lexsort((found.units, found.codes, -found.best_acts, -found.counts))
    expected = [(int(found.codes[i]), int(found.units[i])) for i in full]
    for start, stop in ((0, 20), (20, 40), (1000, 1020), (2990, 3010), (0, n)):
        got = [(table.sources.index(h.source), h.unit) for h in found.page(start, stop)]
        assert got == expected[start:stop], (start, stop)


def _core(token: str) -> str:
    """A token's text without one leading-space marker, case folded (written here, apart
    from the store's TokenVariants)."""
    if len(token) > 1 and token[0] in (" ", "\u0120", "\u2581"):
        token = token[1:]
    return token.casefold()


def _ranked(units: dict[tuple[str, int], list]) -> list[tuple[str, int, int, float]]:
    """(source, unit, count, best activation) by count, activation, source and unit."""
    return sorted(((s, u, n, b) for (s, u), (n, b) in units.items()), key=lambda h: (-h[2], -h[3], h[0], h[1]))


@pytest.fixture(scope="module")
def focus_rows(db) -> tuple[dict[int, str], list[tuple[str, int, float, int]]]:
    """The vocabulary, and every top example as (source, unit, activation, focus token id)."""
    vocab = dict(db.execute("SELECT token_id, token FROM vocab WHERE model = ?", [M]).fetchall())
    rows = db.execute(
        "SELECT e.source, e.unit, e.act, s.token_ids[e.pos + 1] FROM examples e "
        "JOIN sequences s ON s.model = e.model AND s.seq = e.seq WHERE e.model = ? AND e.band IS NULL",
        [M],
    ).fetchall()
    return vocab, rows


def test_every_token_search_equals_a_brute_force_ranking(client, focus_rows):
    """The store ranks each group of spellings once, when it loads its lookup, and a
    search slices it: every group's search (all sources, each source, a later page)
    equals a ranking counted here in Python from the file's top examples."""
    vocab, rows = focus_rows
    hits: dict[str, dict[tuple[str, int], list]] = {}
    for source, unit, act, tok in rows:
        h = hits.setdefault(_core(vocab[tok]), {}).setdefault((source, unit), [0, act])
        h[0] += 1
        h[1] = max(h[1], act)
    spellings: dict[str, list[int]] = {}
    for token_id, token in sorted(vocab.items()):
        spellings.setdefault(_core(token), []).append(token_id)
    store = client.app.state.catalog.store(M)
    sources = [s.slug for s in store.sources(M)]
    largest = sorted(hits, key=lambda c: (-len(hits[c]), c))[:8]
    assert len(hits) > 50 and any(len(spellings[c]) > 1 for c in largest)
    for core, units in hits.items():
        expected = _ranked(units)
        query = vocab[spellings[core][-1]]
        data = client.get(f"/api/{M}/search", params={"token": query, "per_page": 500}).json()
        got = [(u["source"], u["index"], u["n_top_examples"], u["best_act"]) for u in data["units"]]
        assert data["total"] == len(expected) and got == expected[:500], query
        assert store.focus_table(M).search(spellings[core]).in_order  # the ranked slice, no sort per search
        if core not in largest:
            continue
        for source in sources:
            mine = [h for h in expected if h[0] == source]
            data = client.get(f"/api/{M}/search", params={"token": query, "source": source, "per_page": 500}).json()
            assert [(u["source"], u["index"], u["n_top_examples"]) for u in data["units"]] == [h[:3] for h in mine]
        data = client.get(f"/api/{M}/search", params={"token": query, "per_page": 3, "page": 2}).json()
        assert [(u["source"], u["index"]) for u in data["units"]] == [h[:2] for h in expected[3:6]]


def test_a_search_of_part_of_a_group_reads_it_from_sql(client, focus_rows):
    """Rows merged per group cannot answer a search for one of a group's spellings alone:
    the store's lookup hands it to SQL, which gives that token's own ranking."""
    vocab, rows = focus_rows
    spellings: dict[str, list[int]] = {}
    for token_id, token in sorted(vocab.items()):
        spellings.setdefault(_core(token), []).append(token_id)
    on: dict[int, dict[tuple[str, int], list]] = {}
    for source, unit, act, tok in rows:
        h = on.setdefault(tok, {}).setdefault((source, unit), [0, act])
        h[0] += 1
        h[1] = max(h[1], act)
    token = max((t for t in on if len(spellings[_core(vocab[t])]) > 1), key=lambda t: (len(on[t]), -t))
    table = client.app.state.catalog.store(M).focus_table(M)
    assert type(table).__name__ == "FocusTable"
    found = table.search([token])
    got = [(h.source, h.unit, h.count, h.best_act) for h in found.page(0, found.total)]
    assert len(got) > 1 and got == _ranked(on[token])


def test_focus_table_groups_rank_as_a_brute_force_count():
    """FocusTable with groups of spellings: each group's search (all sources and each),
    and a search of several groups, against a count written here; some of a group's
    tokens alone raise without a fallback, and go to it with one."""
    import numpy as np

    from actscope.indexer.store.token_search import FocusTable

    rng = np.random.default_rng(1)
    group_of = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4, 5], dtype=np.int32)
    n_units, sources = 400, ["a", "b", "c"]
    rows = []  # one top example each: (token, code, unit, rank, act)
    for code in range(len(sources)):
        for unit in range(n_units):
            acts = np.sort(rng.choice(np.array([-1.0, -0.0, 0.0, 0.5, 2.0, 3.25], dtype=np.float32), 6))[::-1]
            for rank, act in enumerate(acts):
                rows.append((int(rng.integers(0, len(group_of))), code, unit, rank, float(act)))
    per_token: dict[tuple[int, int, int], list] = {}  # (token, code, unit) -> [count, best act, best rank]
    for tok, code, unit, rank, act in rows:
        h = per_token.setdefault((tok, code, unit), [0, act, rank])
        h[0] += 1
        if rank < h[2]:
            h[1], h[2] = act, rank
    keys = list(per_token)
    col = lambda i, dtype: np.array([k[i] for k in keys], dtype=dtype)  # noqa: E731
    vals = lambda i, dtype: np.array([per_token[k][i] for k in keys], dtype=dtype)  # noqa: E731
    columns = (col(0, np.int32), col(1, np.int32), col(2, np.int32), vals(0, np.int32))
    table = FocusTable(sources, *columns, vals(1, np.float32), vals(2, np.int32), group_of)

    def expected(tokens: set[int], code: int | None = None) -> list[tuple[str, int, int, float]]:
        units: dict[tuple[str, int], list] = {}
        for tok, c, unit, _, act in rows:
            if tok in tokens and code in (None, c):
                h = units.setdefault((sources[c], unit), [0, act])
                h[0] += 1
                h[1] = max(h[1], act)
        return _ranked(units)

    def hits(found) -> list[tuple[str, int, int, float]]:
        return [(h.source, h.unit, h.count, h.best_act) for h in found.page(0, found.total)]

    for group in range(int(group_of.max()) + 1):
        tokens = [int(t) for t in np.flatnonzero(group_of == group)]
        assert hits(table.search(tokens)) == expected(set(tokens)), group
        for code, source in enumerate(sources):
            assert hits(table.search(tokens, source)) == expected(set(tokens), code), (group, source)
        found = table.search(tokens)
        assert [(h.source, h.unit) for h in found.page(37, 58)] == [h[:2] for h in expected(set(tokens))[37:58]]
    assert hits(table.search([0, 1, 5, 9])) == expected({0, 1, 5, 9})  # three groups: summed per unit
    with pytest.raises(ValueError):
        table.search([2, 3])  # group 1 without token 4
    asked = []
    with_sql = FocusTable(
        sources, *columns, vals(1, np.float32), vals(2, np.int32), group_of, lambda *a: asked.append(a)
    )
    with_sql.search([2, 3], "b")
    assert asked == [([2, 3], "b")]
