"""The API's numbers are the index's numbers: cross-checked against the DuckDB file."""

from __future__ import annotations

import io
import json
import shutil

import duckdb
import pytest

from actscope.app import schemas
from actscope.indexer.errors import ActscopeError

M = "tiny"


def _units(db):
    return db.execute("SELECT source, unit FROM unit_stats WHERE model = ? ORDER BY source, unit", [M]).fetchall()


def test_home_counts_match_the_file(client, db):
    data = client.get("/api").json()
    schemas.HomeOut.model_validate(data)
    n_seq, n_tok = db.execute("SELECT n_sequences, n_tokens FROM models WHERE model = ?", [M]).fetchone()
    assert data["n_sequences"] == n_seq and data["n_tokens"] == n_tok
    rows = db.execute("SELECT slug, hook_name, kind, n_units FROM sources WHERE model = ?", [M]).fetchall()
    got = {(s["slug"], s["hook_name"], s["kind"], s["n_units"]) for s in data["models"][0]["sources"]}
    assert got == set(rows)


@pytest.mark.parametrize("which", [0, -1])
def test_unit_json_matches_the_file(client, db, which):
    source, unit = _units(db)[which]
    data = client.get(f"/api/{M}/{source}/{unit}").json()
    schemas.UnitOut.model_validate(data)
    mx, mean, std, density, n_tokens, counts = db.execute(
        "SELECT max, mean, std, density, n_tokens, hist_counts FROM unit_stats "
        "WHERE model = ? AND source = ? AND unit = ?",
        [M, source, unit],
    ).fetchone()
    st = data["stats"]
    assert st["max"] == pytest.approx(mx) and st["mean"] == pytest.approx(mean)
    assert st["std"] == pytest.approx(std) and st["density"] == pytest.approx(density)
    assert st["n_tokens"] == n_tokens and st["histogram"]["counts"] == list(counts)
    # Top examples: the stored activations, and the stored sequence's tokens.
    stored = db.execute(
        "SELECT seq, pos, act, start, acts FROM examples WHERE model = ? AND source = ? AND unit = ? "
        "AND band IS NULL ORDER BY rank",
        [M, source, unit],
    ).fetchall()
    assert len(data["top"]) == len(stored) > 0
    vocab = dict(db.execute("SELECT token_id, token FROM vocab WHERE model = ?", [M]).fetchall())
    for ex, (seq, pos, act, start, acts) in zip(data["top"], stored):
        assert (ex["seq"], ex["pos"], ex["start"]) == (seq, pos, start)
        assert ex["act"] == pytest.approx(act) and ex["acts"] == pytest.approx(list(acts))
        ids = db.execute("SELECT token_ids FROM sequences WHERE model = ? AND seq = ?", [M, seq]).fetchone()[0]
        assert ex["token_ids"] == list(ids[start : start + len(acts)])
        assert ex["tokens"] == [vocab[i] for i in ex["token_ids"]]
        assert ex["acts"][ex["focus"]] == pytest.approx(ex["act"])
        assert ex["start"] + ex["focus"] == ex["pos"]
    assert [e["act"] for e in data["top"]] == sorted((e["act"] for e in data["top"]), reverse=True)
    # Bands: edges and shares as stored, examples inside their band.
    bands = db.execute(
        "SELECT band, lo, hi, share FROM bands WHERE model = ? AND source = ? AND unit = ? ORDER BY band",
        [M, source, unit],
    ).fetchall()
    assert [(b["band"], b["lo"], b["hi"], b["share"]) for b in data["bands"]] == [
        (b, pytest.approx(lo), pytest.approx(hi), pytest.approx(sh)) for b, lo, hi, sh in bands
    ]
    for b in data["bands"]:
        for ex in b["examples"]:
            assert b["lo"] - 1e-5 <= ex["act"] <= b["hi"] + 1e-5
    # Logit effects.
    top_ids, top_values = db.execute(
        "SELECT top_ids, top_values FROM logits WHERE model = ? AND source = ? AND unit = ?", [M, source, unit]
    ).fetchone()
    assert [t["token_id"] for t in data["logits"]["top"]] == list(top_ids)
    assert [t["value"] for t in data["logits"]["top"]] == pytest.approx(list(top_values))
    assert [t["token"] for t in data["logits"]["top"]] == [vocab[i] for i in top_ids]


def test_sequence_json_is_the_stored_token_ids(client, db):
    seq, ids = db.execute(
        "SELECT seq, token_ids FROM sequences WHERE model = ? ORDER BY seq DESC LIMIT 1", [M]
    ).fetchone()
    data = client.get(f"/api/{M}/sequences/{seq}").json()
    schemas.SequenceOut.model_validate(data)
    bos = db.execute("SELECT bos_token_id FROM models WHERE model = ?", [M]).fetchone()[0]
    assert data["token_ids"] == list(ids) and data["token_ids"][0] == bos
    assert len(data["tokens"]) == len(ids)


def test_source_table_matches_the_file(client, db):
    source = _units(db)[0][0]
    data = client.get(f"/api/{M}/{source}?sort=unit&order=asc&per_page=500").json()
    schemas.SourceTableOut.model_validate(data)
    rows = db.execute(
        "SELECT unit, max, density FROM unit_stats WHERE model = ? AND source = ? ORDER BY unit", [M, source]
    ).fetchall()
    assert [(u["index"], pytest.approx(u["max"]), pytest.approx(u["density"])) for u in data["units"]] == [
        (u, pytest.approx(mx), pytest.approx(d)) for u, mx, d in rows
    ]
    # Filters: density range, and the top token text.
    lo = sorted(d for _, _, d in rows)[len(rows) // 2]
    dense = client.get(f"/api/{M}/{source}?min_density={lo}&per_page=500").json()
    assert dense["total"] == sum(1 for _, _, d in rows if d >= lo)
    tok = data["units"][0]["top_token"]
    hits = client.get(f"/api/{M}/{source}", params={"q": tok, "per_page": 500}).json()
    assert 0 in [u["index"] for u in hits["units"]]
    # q matches the top token's text, or a unit number.
    assert all(
        tok.lower() in (u["top_token"] or "").lower() or str(u["index"]) == tok.strip().lower() for u in hits["units"]
    )
    assert hits["total"] < data["total"] or all(tok.lower() in (u["top_token"] or "").lower() for u in data["units"])


def test_search_by_token_finds_the_top_example_focus(client, db):
    source, unit = _units(db)[0]
    ex = client.get(f"/api/{M}/{source}/{unit}").json()["top"][0]
    token = ex["tokens"][ex["focus"]]
    data = client.get(f"/api/{M}/search", params={"token": token}).json()
    schemas.SearchOut.model_validate(data)
    assert ex["token_ids"][ex["focus"]] in data["token_ids"]
    assert (source, unit) in [(u["source"], u["index"]) for u in data["units"]]


def test_export_parquet_and_jsonl(client, db):
    import pyarrow.parquet as pq

    source = _units(db)[0][0]
    n_units = db.execute("SELECT n_units FROM sources WHERE model = ? AND slug = ?", [M, source]).fetchone()[0]
    r = client.get(f"/api/{M}/{source}/export.parquet")
    assert r.status_code == 200 and r.content[:4] == b"PAR1"
    table = pq.read_table(io.BytesIO(r.content))
    assert table.num_rows == n_units
    row0 = table.slice(0, 1).to_pylist()[0]
    unit0 = client.get(f"/api/{M}/{source}/{row0['unit']}").json()
    assert row0["max"] == pytest.approx(unit0["stats"]["max"])
    top = [e for e in row0["examples"] if e["band"] is None]
    assert [e["act"] for e in top] == pytest.approx([e["act"] for e in unit0["top"]])
    r = client.get(f"/api/{M}/{source}/export.jsonl")
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert len(lines) == n_units and [x["unit"] for x in lines] == list(range(n_units))
    assert lines[0]["bands"][0]["share"] == pytest.approx(unit0["bands"][0]["share"])


def test_missing_unreadable_or_wrong_version_files(web_index, tmp_path):
    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    with pytest.raises(ActscopeError, match="no such index file"):
        create_app(Settings(index_file=tmp_path / "missing.duckdb"))
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ActscopeError, match="cannot open"):
        create_app(Settings(index_file=junk))
    old = tmp_path / "old.duckdb"
    shutil.copyfile(web_index, old)
    con = duckdb.connect(str(old))
    con.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(ActscopeError, match="schema version 0"):
        create_app(Settings(index_file=old))
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    with pytest.raises(ActscopeError, match="not an actscope index"):
        create_app(Settings(index_file=empty))


def test_serve_reports_bad_files_as_one_line(tmp_path, restored_environ):
    from click.testing import CliRunner

    from actscope.cli import main

    result = CliRunner().invoke(main, ["serve", str(tmp_path / "nope.duckdb")])
    assert result.exit_code == 2
    assert "no such index file" in result.output


def test_memory_resident_and_sql_reads_agree(web_index):
    """The in-memory tables (fast path) return exactly what SQL returns."""
    from actscope.indexer.store.reader import Store

    mem, sql = Store(web_index), Store(web_index, resident_mb=0)
    assert mem.resident and not sql.resident
    for src in mem.sources(M):
        for unit in range(src.n_units):
            assert mem.unit(M, src.slug, unit) == sql.unit(M, src.slug, unit), (src.slug, unit)
        assert mem.unit(M, src.slug, src.n_units) is None
    n_seq = mem.model(M).n_sequences
    for seq in (0, n_seq - 1, n_seq + 5):
        assert mem.sequence(M, seq) == sql.sequence(M, seq)
    mem.close()
    sql.close()


def test_response_cache_serves_identical_bytes(web_index):
    from fixtures_web import make_client

    with make_client(web_index, live=False) as c:
        first = [c.get(p) for p in (f"/{M}/0-mlp/3", f"/api/{M}/0-mlp/3")]
        cache = c.app.state.response_cache
        hits = cache.hits
        again = [c.get(p) for p in (f"/{M}/0-mlp/3", f"/api/{M}/0-mlp/3")]
        assert cache.hits == hits + 2
        for a, b in zip(first, again):
            assert a.content == b.content and a.headers["content-type"] == b.headers["content-type"]
        # An htmx fragment is cached apart from the full page.
        frag = c.get(f"/{M}/0-mlp/3", headers={"HX-Request": "true", "HX-Target": "examples"})
        assert "<html" not in frag.text and frag.content != first[0].content
