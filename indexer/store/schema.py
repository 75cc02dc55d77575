"""The DuckDB schema of an actscope index: the one place its DDL lives.

Bump SCHEMA_VERSION on any change to the tables below; the app refuses files written
with another version instead of rendering wrong pages.

Conventions:
- One file holds one model (the `models` table has one row) but every table carries the
  model name so several files can later be attached side by side.
- `unit` is the index of a neuron or SAE feature inside its source.
- Positions (`pos`, `start`) index the exact token ids of `sequences.token_ids`, where
  position 0 is BOS. BOS positions are never the focus of an example and never counted
  in statistics.
- `examples.band` is NULL for top-k examples, else the band number (0 = lowest band).
  `rank` orders examples inside their group (top: by activation, descending; band: by
  sampling key, i.e. in random order).
- `examples.acts` holds the unit's activation at positions start .. start+len(acts)-1.
- Fingerprints: every unit's activation at the `reservoir` positions (slot i = row i),
  float16 little-endian bytes (numpy dtype '<f2'); sparse kinds keep the nonzero values
  only, with their slots ('<u2'). meta['reservoir'] has its size and seed.
"""

SCHEMA_VERSION = 6  # 6: fingerprints, the reservoir, decoders; 5: the directions table; 4: models.loader, bundled model specs by name; 3: vocab.token_bytes; 2: no primary keys on the tables written at the end of a run

TABLES = {
    "meta": """
        CREATE TABLE meta (
            key VARCHAR PRIMARY KEY,
            value VARCHAR NOT NULL          -- JSON text for structured values
        )""",
    "models": """
        CREATE TABLE models (
            model VARCHAR PRIMARY KEY,      -- URL slug, e.g. 'gelu-1l', 'toy-2l'
            spec VARCHAR NOT NULL,          -- JSON: how to load it again (kind, name/path, kwargs)
            processing VARCHAR NOT NULL,    -- JSON: weight processing used (fold_ln, ...)
            loader VARCHAR NOT NULL,        -- JSON: what loaded it (HookedTransformer, TransformerLens
                                            -- version, architecture, where its config came from)
            n_layers INTEGER NOT NULL,
            d_model INTEGER NOT NULL,
            d_vocab INTEGER NOT NULL,
            n_ctx INTEGER NOT NULL,         -- the model's maximum context
            ctx INTEGER NOT NULL,           -- sequence length used by this index (BOS included)
            bos_token_id INTEGER NOT NULL,
            eos_token_id INTEGER NOT NULL,
            n_sequences BIGINT NOT NULL,
            n_tokens BIGINT NOT NULL        -- indexed tokens (BOS excluded)
        )""",
    "sources": """
        CREATE TABLE sources (
            model VARCHAR NOT NULL,
            slug VARCHAR NOT NULL,          -- e.g. '1-mlp', '1-res-sae'
            hook_name VARCHAR NOT NULL,     -- TransformerLens hook, e.g. 'blocks.1.mlp.hook_post'
            kind VARCHAR NOT NULL,          -- 'neuron' | 'sae' | 'direction' (a kind of the registry)
            layer INTEGER NOT NULL,
            n_units INTEGER NOT NULL,
            spec VARCHAR NOT NULL,          -- JSON: SAE path/release for reloading ({} for neurons;
                                            -- for random directions N, width, seed and the option)
            band_levels DOUBLE[] NOT NULL,  -- nominal quantile levels of the band edges
            band_basis VARCHAR NOT NULL,    -- 'all' tokens (neurons) | 'firing' tokens (SAE)
            PRIMARY KEY (model, slug)
        )""",
    "vocab": """
        CREATE TABLE vocab (
            model VARCHAR NOT NULL,
            token_id INTEGER NOT NULL,
            token VARCHAR NOT NULL,         -- decoded text of the single token
            token_bytes BLOB NOT NULL       -- the token's raw bytes (a token may hold part of a
                                            -- character: its text then has U+FFFD)
        )""",
    "sequences": """
        CREATE TABLE sequences (
            model VARCHAR NOT NULL,
            seq INTEGER NOT NULL,
            token_ids INTEGER[] NOT NULL,   -- exactly what was fed to the model, BOS first
            PRIMARY KEY (model, seq)
        )""",
    "unit_stats": """
        CREATE TABLE unit_stats (
            model VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            unit INTEGER NOT NULL,
            max REAL NOT NULL,
            min REAL NOT NULL,
            mean DOUBLE NOT NULL,
            std DOUBLE NOT NULL,
            density DOUBLE NOT NULL,        -- share of indexed tokens with activation > 0
            n_tokens BIGINT NOT NULL,       -- indexed tokens
            n_fired BIGINT NOT NULL,        -- tokens with activation > 0
            cos_in_out REAL,                -- neurons only: cos(W_in[:, n], W_out[n])
            hist_edges DOUBLE[] NOT NULL,   -- len(hist_counts) + 1 edges, first = min, last = max;
                                            -- bin i holds edges[i] < act <= edges[i+1], bin 0 also
                                            -- act == edges[0]. SAE features: bin 0 is [0, 0], the
                                            -- tokens where the feature is silent
            hist_counts BIGINT[] NOT NULL   -- sums to n_tokens
        )""",
    "bands": """
        CREATE TABLE bands (
            model VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            unit INTEGER NOT NULL,
            band INTEGER NOT NULL,
            q_lo DOUBLE NOT NULL,           -- nominal quantile levels that defined the band
            q_hi DOUBLE NOT NULL,
            lo DOUBLE NOT NULL,             -- activation edges: lo < act <= hi, and the lowest
            hi DOUBLE NOT NULL,             --   non-empty band also holds act == lo (the unit's min)
            count BIGINT NOT NULL,          -- exact number of indexed tokens inside
            share DOUBLE NOT NULL           -- count / n_tokens (all indexed tokens)
        )""",
    "examples": """
        CREATE TABLE examples (
            model VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            unit INTEGER NOT NULL,
            band INTEGER,                   -- NULL: top-k example
            rank INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            pos INTEGER NOT NULL,           -- focus position in the sequence
            act REAL NOT NULL,              -- activation at the focus
            start INTEGER NOT NULL,         -- sequence position of the first value in acts
            acts REAL[] NOT NULL
        )""",
    "logits": """
        CREATE TABLE logits (
            model VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            unit INTEGER NOT NULL,
            top_ids INTEGER[] NOT NULL,     -- tokens most boosted by the unit's output direction
            top_values REAL[] NOT NULL,
            bottom_ids INTEGER[] NOT NULL,  -- tokens most suppressed
            bottom_values REAL[] NOT NULL
        )""",
    "directions": """
        CREATE TABLE directions (
            model VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            unit INTEGER NOT NULL,
            direction REAL[] NOT NULL       -- the unit's vector in its hook's space (heads flattened),
                                            -- for kinds whose units are stored vectors (random
                                            -- directions: unit norm; activation = act . direction)
        )""",
    "reservoir": """
        CREATE TABLE reservoir (
            model VARCHAR NOT NULL,
            slot INTEGER NOT NULL,          -- 0 .. n-1, in corpus order
            seq INTEGER NOT NULL,
            pos INTEGER NOT NULL,           -- never BOS, never a sequence's last position
            token_id INTEGER NOT NULL       -- the token there (what cross-model neighbours check)
        )""",
    "fingerprints": """
        CREATE TABLE fingerprints (
            model VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            unit INTEGER NOT NULL,
            slots BLOB,                     -- NULL: a value at every slot; else the slots ('<u2') of
                                            -- the nonzero values (sparse kinds), the others are 0
            acts BLOB NOT NULL              -- float16 ('<f2') activations at those slots
        )""",
    "decoders": """
        CREATE TABLE decoders (
            model VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            unit INTEGER NOT NULL,
            direction REAL[] NOT NULL       -- the direction the unit's decoder row writes into the
                                            -- residual stream (SAE features): decoder cosine neighbours
        )""",
}

# The tables written once at the end of a run (unit_stats, bands, logits, directions, vocab,
# reservoir, fingerprints, decoders) have no primary key: each is one insert of rows unique by construction, in key order, where a
# key's index would be a large share of the insert. No secondary indexes either: rows are
# written in unit order, so DuckDB's zone maps already skip to a unit's rows.


def create_all(con) -> None:
    """Create every table of the current schema version in an empty database."""
    for ddl in TABLES.values():
        con.execute(ddl)
    con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
