"""`actscope demo`: index the bundled toy model over the built-in default corpus.

The demo index covers every MLP neuron of both layers and every feature of the bundled
SAE, on `--dataset default` (held-out text first). Its size is chosen so that indexing
takes under two minutes on two CPU cores. An existing file is reused as long as it was
written by this actscope version from the same bundled files with the same demo
settings, so a second `make demo` serves at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from actscope.indexer.errors import ActscopeError

DEMO_MODEL = "toy-2l"
DEMO_DATASET = "default"
# All held-out text first, then training text: sized to index in about a minute on two
# cores (docs/benchmarks.md).
DEMO_MAX_TOKENS = 800_000
DEMO_CTX = 128
DEMO_BATCH = 32
# Examples kept per band (the indexer's default): every band's examples are in a unit's
# JSON, so this sets its size (4x this made the demo's unit JSON 300 KB and 4x slower).
DEMO_BAND_SIZE = 8


def demo_options(out: str | Path) -> dict:
    """The `actscope index` options of the demo (also what the compose file runs)."""
    from actscope.indexer import bundled

    saes = bundled.bundled_sae_names()
    if not saes or bundled.model_dir(DEMO_MODEL) is None:
        raise ActscopeError(
            "the bundled toy model is missing from this installation (indexer/bundled/default/); "
            "reinstall actscope or run `actscope train-default`"
        )
    return {
        "model": DEMO_MODEL,
        "dataset": DEMO_DATASET,
        "out": str(out),
        "saes": saes,
        "max_tokens": DEMO_MAX_TOKENS,
        "ctx": DEMO_CTX,
        "batch_size": DEMO_BATCH,
        "band_size": DEMO_BAND_SIZE,
        "device": "cpu",
    }


def package_version() -> str:
    from actscope import __version__

    return __version__


def read_meta(path: str | Path) -> dict[str, str] | None:
    """The meta table of an index file, or None if the file is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        import duckdb

        con = duckdb.connect(str(path), read_only=True)
        try:
            return dict(con.execute("SELECT key, value FROM meta").fetchall())
        finally:
            con.close()
    except Exception:  # a foreign or half-written file: rebuild it
        return None


def index_is_current(path: str | Path) -> bool:
    """True if `path` is a demo index written by this version with the demo settings."""
    from actscope.indexer.store.schema import SCHEMA_VERSION

    meta = read_meta(path)
    if meta is None:
        return False
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        return False
    if meta.get("package_version") != package_version():
        return False
    recorded = _json(meta.get("run_config"))
    if not isinstance(recorded, dict):
        return False
    from actscope.indexer import bundled

    if meta.get("bundled_digest") != bundled.digest():  # the bundled model or SAE was retrained
        return False
    wanted = demo_options(path)
    return all(
        recorded.get(key) == wanted[key] for key in ("model", "dataset", "saes", "max_tokens", "ctx", "band_size")
    )


def _json(text: str | None):
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def build_demo_index(out: str | Path, rebuild: bool = False, log=print) -> Path:
    """Build the demo index at `out` unless an up-to-date one is already there."""
    out = Path(out)
    if not rebuild and index_is_current(out):
        log(f"demo: {out} is up to date (actscope {package_version()}); serving it")
        return out
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    if out.exists():
        from actscope.indexer.store.schema import SCHEMA_VERSION

        found = (read_meta(out) or {}).get("schema_version")
        if found is not None and found != str(SCHEMA_VERSION):
            log(f"demo: {out} has index schema version {found}, this actscope writes {SCHEMA_VERSION}; rebuilding")
        else:
            log(f"demo: {out} was written by another actscope version or with other settings; rebuilding")
    options = demo_options(out)
    log(
        f"demo: indexing {options['model']} ({', '.join(options['saes'])}) over "
        f"--dataset {options['dataset']}, {options['max_tokens']:,} tokens; about a minute on 2 free cores"
    )
    started = time.time()
    from actscope.indexer import bundled
    from actscope.indexer.store.writer import add_meta

    summary = run_index(IndexConfig(**options))
    add_meta(out, bundled_digest=bundled.digest())
    log(str(summary))
    log(f"demo: index built in {time.time() - started:.0f} s")
    return out
