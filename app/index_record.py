"""What the pages say about how an index was built: the corpus, its size, when, and the
run record with the indexing machine's absolute paths reduced to file names."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any


def file_name(value: str) -> str:
    """An absolute path's last part; any other string unchanged."""
    if value.startswith(("/", "~")):
        return PurePosixPath(value).name or value
    if len(value) > 2 and value[1] == ":" and value[2] in "\\/":
        return PureWindowsPath(value).name or value
    return value


def without_paths(value: Any) -> Any:
    """`value` with every absolute path in it (nested in dicts, lists, JSON text) reduced."""
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    if isinstance(value, str):
        if value[:1] in "{[":
            try:
                return without_paths(json.loads(value))
            except ValueError:
                pass
        return file_name(value)
    return value


def corpus(meta: dict[str, Any]) -> dict[str, str]:
    """The corpus as the index names it; indexes older than the `corpus` record name
    only the dataset spec."""
    found = meta.get("corpus")
    if isinstance(found, dict) and "name" in found:
        return {k: str(v) for k, v in found.items()}
    spec = str(meta.get("dataset") or "unknown")
    return {"name": file_name(spec), "source": "", "description": ""}


def built_at(meta: dict[str, Any]) -> str | None:
    """When the index was written, as "2026-12-02 01:29 UTC"."""
    raw = meta.get("created_at")
    try:
        when = datetime.fromisoformat(str(raw))
    except ValueError:
        return None
    offset = when.utcoffset()
    return when.strftime("%Y-%m-%d %H:%M") + (" UTC" if offset is not None and not offset.total_seconds() else "")


def summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The facts a visitor needs (`corpus`, `built_at`) and the full run record (`meta`)."""
    return {"corpus": corpus(meta), "built_at": built_at(meta), "meta": without_paths(meta)}
