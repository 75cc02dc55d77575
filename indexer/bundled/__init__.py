"""The bundled default model and SAE, shipped as package data under indexer/bundled/default/.

`--model toy-2l` and `--sae toy-2l/<sae-name>` resolve here before anything else.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEFAULT_MODEL = "toy-2l"


def _default_root() -> Path:
    return Path(str(files("actscope.indexer.bundled") / "default"))


def model_dir(name: str) -> Path | None:
    """The bundled model directory for `name`, or None if `name` is not bundled."""
    if name != DEFAULT_MODEL:
        return None
    path = _default_root() / "model"
    return path if path.is_dir() else None


def sae_dir(name: str) -> Path | None:
    """The bundled SAE directory for `toy-2l/<sae>`, or None if not bundled."""
    model, _, sae = name.partition("/")
    if model != DEFAULT_MODEL or not sae:
        return None
    path = _default_root() / "saes" / sae
    return path if path.is_dir() else None


def bundled_sae_names() -> list[str]:
    root = _default_root() / "saes"
    if not root.is_dir():
        return []
    return sorted(f"{DEFAULT_MODEL}/{p.name}" for p in root.iterdir() if (p / "cfg.json").is_file())


def digest() -> str:
    """A hash of every bundled file (model, SAEs, report): an index of the bundled model
    built before a retraining must not pass for a current one."""
    import hashlib

    h = hashlib.sha256()
    root = _default_root()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
