"""ACTSCOPE_RESIDENT_MB: what the store keeps in memory stays within it, and what does
not fit is read with SQL, giving the same pages and JSON as from memory."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from fixtures_web import make_client

M = "tiny"


def _pages(store) -> list[str]:
    """Unit pages, source tables sorted by each column both ways, and token searches."""
    paths = []
    for src in store.sources(M):
        for unit in (0, 1, src.n_units // 2, src.n_units - 1):
            paths += [f"/api/{M}/{src.slug}/{unit}", f"/{M}/{src.slug}/{unit}", f"/{M}/{src.slug}/{unit}?band=1"]
        for col in store.unit_table(M, src.slug).columns:
            for order in ("asc", "desc"):
                query = f"sort={col}&order={order}&hide_dead=false&per_page=7&page=2"
                paths += [f"/api/{M}/{src.slug}?{query}", f"/{M}/{src.slug}?{query}"]
    vocab = store.vocab(M)
    for token in sorted({vocab[i] for i in range(1, len(vocab), max(1, len(vocab) // 12))}):
        paths += [f"/api/{M}/search?token={quote(token)}&per_page=500", f"/{M}/search?token={quote(token)}"]
    paths.append(f"/api/{M}/search?token={quote(vocab[5])}&source=1-res-sae")
    return paths


def _get(client, path: str) -> tuple[int, bytes]:
    r = client.get(path)
    return r.status_code, r.content


@pytest.fixture(scope="module")
def full_size(web_index) -> int:
    """Bytes the store holds with every part of the tiny index in memory."""
    from actscope.indexer.store.reader import Store

    store = Store(web_index)
    try:
        for src in store.sources(M):
            store.unit_table(M, src.slug)
        store.focus_table(M)
        assert store.resident
        return store.resident_bytes
    finally:
        store.close()


def test_pages_from_sql_equal_pages_from_memory(web_index, full_size):
    """With no budget everything is read with SQL; with a third of what the index needs,
    some of it; every unit page, JSON, sorted table page and search is the same."""
    with make_client(web_index, live=False, response_cache_mb=0) as mem:
        store = mem.app.state.catalog.store(M)
        paths = _pages(store)
        expected = {p: _get(mem, p) for p in paths}
        assert store.resident and type(store.focus_table(M)).__name__ == "FocusTable"
    assert all(status == 200 for status, _ in expected.values())
    for mb in (0, full_size / 3 / 2**20):
        with make_client(web_index, live=False, response_cache_mb=0, resident_mb=mb) as low:
            store = low.app.state.catalog.store(M)
            assert not store.resident
            for path in paths:
                assert _get(low, path) == expected[path], (mb, path)
            store.settle()
            if mb == 0:
                assert store.resident_bytes == 0 and type(store.focus_table(M)).__name__ == "SqlFocus"
            else:  # the sources left to SQL are read by rowid range
                keys = store.budget.keys()
                assert any(k[0] == "rows" and ("unit data", *k[1:]) not in keys for k in keys), keys
            for path in paths:  # again, with whatever the loader brought into memory meanwhile
                assert _get(low, path) == expected[path], (mb, path)


def test_resident_bytes_stay_within_the_budget(web_index, full_size, db):
    """Visit everything with budgets from a tenth to all of what the index needs: the
    store never reports more than its budget, keeps something once the budget holds a
    source, and counts at least the raw bytes of each source it keeps (from the file)."""
    from actscope.indexer.store.reader import Store

    # What no column's narrowing (integers in their smallest type) can shrink: the floats.
    raw = {
        slug: sum(
            db.execute(sql, [M, slug]).fetchone()[0]
            for sql in (
                "SELECT sum(len(acts)) * 4 + count(*) * 4 FROM examples WHERE model = ? AND source = ?",
                "SELECT sum(len(hist_edges)) * 8 + count(*) * 28 FROM unit_stats WHERE model = ? AND source = ?",
                "SELECT count(*) * 40 FROM bands WHERE model = ? AND source = ?",
            )
        )
        for (slug,) in db.execute("SELECT slug FROM sources WHERE model = ?", [M]).fetchall()
    }
    kept = []
    for share in (0.1, 0.3, 0.6, 1.5):
        limit_mb = share * full_size / 2**20
        store = Store(web_index, resident_mb=limit_mb)
        try:
            limit = int(limit_mb * 2**20)
            for src in store.sources(M):
                for unit in range(src.n_units):
                    store.unit(M, src.slug, unit)
                    assert store.resident_bytes <= limit
                store.unit_table(M, src.slug)
                store.liveness(M, src.slug)
                assert store.resident_bytes <= limit
            store.focus_table(M).search([1, 2, 3])
            store.settle()
            assert store.resident_bytes <= limit
            parts = store.budget.report()["parts"]
            assert sum(size for _, size, _ in parts) == store.resident_bytes
            for key, size, _ in parts:
                if key.startswith("('unit data'"):
                    slug = key.split("'")[-2]
                    assert size >= raw[slug], (key, size, raw[slug])
            kept.append(store.resident_bytes)
        finally:
            store.close()
    assert 0 < kept[0] < kept[-1] == full_size


def test_budget_keeps_tables_before_unit_data():
    """Spare parts (a source's unit data) only take free room and never evict; kept parts
    (tables, search) evict spare ones, least recently used first, and never each other."""
    from actscope.indexer.store.budget import ResidentBudget

    evicted = []
    budget = ResidentBudget(100, on_evict=evicted.append)
    assert budget.admit("a", "A", 40, spare=True) and budget.admit("b", "B", 40, spare=True)
    assert not budget.admit("c", "C", 30, spare=True)  # no room, and spare parts never evict
    assert budget.get("a") == "A"  # a is now the most recently used
    assert budget.admit("table", "T", 50)  # kept: evicts b (least recently used), not a
    assert evicted == ["b"] and budget.keys() == ["a", "table"] and budget.used == 90
    assert not budget.admit("search", "S", 70)  # would need the table evicted too: refused
    assert budget.used == 90 and evicted == ["b"] and budget.get("search") is None
    assert budget.admit("search", "S", 50) and evicted == ["b", "a"] and budget.used == 100


def test_neighbours_within_the_budget_equal_those_from_memory(web_index):
    """Fingerprints and decoders are parts of the budget: with none, each neighbours
    request reads them for itself and drops them; the answers are the same."""
    paths = [
        f"/api/{M}/{slug}/{unit}/similar?scope={scope}&k=7"
        for slug in ("0-mlp", "1-res-sae")
        for unit in (0, 3)
        for scope in ("source", "model")
    ]
    with make_client(web_index, live=False, response_cache_mb=0) as mem:
        expected = {p: _get(mem, p) for p in paths}
        store = mem.app.state.catalog.store(M)
        keys = store.budget.keys()
        held = [k for k in keys if k[0] in ("fingerprints", "decoders")]
        assert len(held) >= 3, keys  # every source's fingerprints, and the SAE's decoders
    assert all(status == 200 and b'"similar":[{' in body for status, body in expected.values())
    with make_client(web_index, live=False, response_cache_mb=0, resident_mb=0) as low:
        store = low.app.state.catalog.store(M)
        for path in paths:
            assert _get(low, path) == expected[path], path
        assert store.resident_bytes == 0
