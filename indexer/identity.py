"""The identity of a sharded run: what every shard must share for their states to merge.

It is made of contents, never of paths: the options that determine the index, a digest
of the model's and the SAEs' files (or their Hub names), the corpus's name and the
package version. Nodes that mount the model or the corpus elsewhere still agree; a state
made with other options or other weights is refused, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from actscope import __version__
from actscope.indexer.config import IndexConfig

READ_CHUNK = 16 << 20


def content_identity(config: IndexConfig, model_spec, sae_specs: list[dict[str, Any]]) -> dict[str, Any]:
    """The identity of a run of `config` over the loaded model of `model_spec` (its
    processing resolved) and the SAEs of `sae_specs` (as resolve_sae_spec gives them)."""
    from actscope.indexer.corpus.documents import describe_corpus

    options = {k: v for k, v in config.identity().items() if k not in ("model", "saes", "dataset")}
    return _normalised(
        {
            "actscope": __version__,
            **options,
            "dataset": describe_corpus(config.dataset, config.text_column, config.split).name,
            "model": {
                "kind": model_spec.kind,
                "slug": model_spec.slug,
                "processing": model_spec.processing,
                "content": _model_content(model_spec),
            },
            "saes": [_sae_content(spec) for spec in sae_specs],
        }
    )


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def differences(ours: dict[str, Any], theirs: dict[str, Any], limit: int = 3) -> list[tuple[str, Any, Any]]:
    """(key, ours, theirs) of the first `limit` entries that differ; nested keys dotted."""
    flat_ours, flat_theirs = _flat(ours), _flat(theirs)
    keys = sorted(k for k in set(flat_ours) | set(flat_theirs) if flat_ours.get(k) != flat_theirs.get(k))
    return [(k, flat_ours.get(k), flat_theirs.get(k)) for k in keys[:limit]]


def describe_differences(ours: dict, theirs: dict, our_name: str, their_name: str) -> str:
    """'top_k: 4 in A, 5 in B; ...' for an error message."""
    return "; ".join(
        f"{key}: {_short(a)} in {our_name}, {_short(b)} in {their_name}" for key, a, b in differences(ours, theirs)
    )


def files_digest(root: Path) -> str:
    """sha256 over a directory's files (hidden ones aside): their paths relative to it,
    sizes and contents."""
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as file:
            while chunk := file.read(READ_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _model_content(spec) -> str:
    from actscope.indexer import bundled

    if spec.kind == "official":
        return f"official:{spec.name}"
    path = bundled.model_dir(spec.name) if spec.kind == "bundled" else Path(spec.name)
    assert path is not None, "a loaded bundled model has a directory"
    return "sha256:" + files_digest(Path(path))


def _sae_content(spec: dict[str, Any]) -> str:
    from actscope.indexer import bundled

    if spec["kind"] == "pretrained":
        return f"pretrained:{spec['release']}/{spec['sae_id']}"
    path = bundled.sae_dir(spec["name"]) if spec["kind"] == "bundled" else Path(spec["path"])
    assert path is not None, "a loaded bundled SAE has a directory"
    return "sha256:" + files_digest(Path(path))


def _normalised(identity: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(identity, default=str))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
