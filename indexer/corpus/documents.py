"""Documents of a dataset spec: a built-in corpus, local files, or a Hugging Face dataset.

Documents are read lazily, so memory does not grow with corpus length.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from actscope.indexer.errors import ActscopeError

TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst"}
JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
PARQUET_SUFFIXES = {".parquet"}
SUPPORTED = TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES


def _is_builtin(name: str) -> bool:
    try:
        from actscope.indexer.corpus import builtin as builtin_corpora
    except ImportError:
        return False
    return builtin_corpora.is_builtin(name)


def _looks_local(spec: str) -> bool:
    return any(ch in spec for ch in "*?[") or spec.startswith((".", "/", "~")) or Path(spec).exists()


def local_files(spec: str) -> list[Path]:
    """Files matched by a path, directory or glob, sorted for a deterministic order."""
    expanded = str(Path(spec).expanduser())
    path = Path(expanded)
    if path.is_dir():
        matches = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED]
    else:
        matches = [Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file()]
    if not matches:
        raise ActscopeError(f"--dataset {spec}: no files match")
    unsupported = sorted({p.suffix or p.name for p in matches if p.suffix.lower() not in SUPPORTED})
    if unsupported:
        raise ActscopeError(
            f"--dataset {spec}: unsupported file type {', '.join(unsupported)} (expected .txt, .jsonl or .parquet)"
        )
    return sorted(matches)


@dataclass(frozen=True)
class CorpusInfo:
    """How the pages name a dataset spec: no absolute paths of the indexing machine."""

    name: str
    source: str  # "built-in", "local files" or "Hugging Face Hub"
    description: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "source": self.source, "description": self.description}


def describe_corpus(spec: str, text_column: str = "text", split: str = "train") -> CorpusInfo:
    if _is_builtin(spec):
        from actscope.indexer.corpus import builtin as builtin_corpora

        return CorpusInfo(spec, "built-in", builtin_corpora.describe(spec))
    if _looks_local(spec):
        name = Path(spec).name or spec
        return CorpusInfo(name, "local files", f"local files matching {name!r}, column {text_column!r}")
    return CorpusInfo(spec, "Hugging Face Hub", f"Hugging Face dataset {spec}, split {split!r}, column {text_column!r}")


def iter_documents(spec: str, text_column: str = "text", split: str = "train") -> Iterator[str]:
    """Documents of a built-in corpus, local files or a Hugging Face dataset (streamed)."""
    if _is_builtin(spec):
        from actscope.indexer.corpus import builtin as builtin_corpora

        yield from builtin_corpora.iter_documents(spec)
        return
    if _looks_local(spec):
        for path in local_files(spec):
            yield from _iter_file(path, text_column)
        return
    yield from _iter_hub(spec, text_column, split)


def _iter_file(path: Path, text_column: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    try:
        if suffix in TEXT_SUFFIXES:
            yield path.read_text(encoding="utf-8", errors="replace")
        elif suffix in JSONL_SUFFIXES:
            yield from _iter_jsonl(path, text_column)
        else:
            yield from _iter_parquet(path, text_column)
    except OSError as exc:
        raise ActscopeError(f"--dataset: cannot read {path}: {exc.strerror or exc}") from exc


def _iter_jsonl(path: Path, text_column: str) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ActscopeError(f"--dataset: {path}:{line_no} is not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or text_column not in row:
                columns = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise ActscopeError(
                    f"--dataset: {path}:{line_no} has no column '{text_column}' (columns: {columns}); "
                    "choose one with --text-column"
                )
            text = row[text_column]
            if isinstance(text, str):
                yield text


def _iter_parquet(path: Path, text_column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise ActscopeError(f"--dataset: {path} is not a readable Parquet file ({exc})") from exc
    names = parquet.schema_arrow.names
    if text_column not in names:
        raise ActscopeError(
            f"--dataset: {path} has no column '{text_column}' (columns: {', '.join(names)}); "
            "choose one with --text-column"
        )
    for batch in parquet.iter_batches(columns=[text_column], batch_size=256):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str):
                yield text


def _iter_hub(name: str, text_column: str, split: str) -> Iterator[str]:
    try:
        from datasets import load_dataset

        stream = load_dataset(name, split=split, streaming=True)
        first = True
        for row in stream:
            if first and text_column not in row:
                raise ActscopeError(
                    f"--dataset {name}: no column '{text_column}' (columns: {', '.join(row)}); "
                    "choose one with --text-column"
                )
            first = False
            text = row[text_column]
            if isinstance(text, str):
                yield text
    except ActscopeError:
        raise
    except Exception as exc:  # network, unknown dataset, bad split
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ActscopeError(
            f"--dataset {name}: not a local file or built-in corpus, and loading it from the "
            f"Hugging Face Hub failed ({message[:200]})"
        ) from exc
