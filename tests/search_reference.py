"""Token search's expected answers, computed from the DuckDB file with SQL written for the
tests (independently of the store's lookup): every top example's focus token, matched
by its text without one leading-space marker, in lower case."""

from __future__ import annotations

CORE = "lower(CASE WHEN length({t}) > 1 AND left({t}, 1) IN (' ', 'Ġ', '▁') THEN substr({t}, 2) ELSE {t} END)"
FOCUS = (
    "SELECT e.source, e.unit, e.act, v.token FROM examples e JOIN sequences s USING (model, seq) "
    "JOIN vocab v ON v.model = e.model AND v.token_id = s.token_ids[e.pos + 1] "
    "WHERE e.model = 'tiny' AND e.band IS NULL"
)


def expected_hits(db, query: str, source: str | None = None) -> list[tuple[str, int, int, float]]:
    """(source, unit, top examples on any spelling of `query`, best activation), ranked:
    a brute-force count over every top example."""
    rows = db.execute(
        f"SELECT source, unit, count(*) AS n, max(act) AS best FROM ({FOCUS}) "
        f"WHERE {CORE.format(t='token')} = {CORE.format(t='$q')} AND ($src IS NULL OR source = $src) "
        "GROUP BY source, unit ORDER BY n DESC, best DESC, source, unit",
        {"q": query, "src": source},
    ).fetchall()
    return [(s, int(u), int(n), float(b)) for s, u, n, b in rows]


def spaced_word(db) -> str:
    """A word the top examples focus on both with and without a leading space (the one
    with the most units)."""
    return db.execute(
        f"SELECT {CORE.format(t='token')} AS core FROM ({FOCUS}) GROUP BY core "
        "HAVING count(DISTINCT token) FILTER (WHERE left(token, 1) = ' ') > 0 "
        "AND count(DISTINCT token) FILTER (WHERE left(token, 1) <> ' ') > 0 AND length(core) > 1 "
        "ORDER BY count(DISTINCT (source, unit)) DESC, core LIMIT 1"
    ).fetchone()[0]


def one_unit_token(db) -> str:
    """A token whose spellings are the focus of one unit's top examples only."""
    return db.execute(
        f"SELECT min(token) FROM ({FOCUS}) GROUP BY {CORE.format(t='token')} "
        "HAVING count(DISTINCT (source, unit)) = 1 ORDER BY 1 LIMIT 1"
    ).fetchone()[0]
