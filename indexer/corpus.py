"""Corpus: documents from a dataset spec, tokenised and packed into fixed-length sequences.

Every sequence is BOS followed by ctx-1 tokens of the document stream, where documents
are separated by EOS. Packing is deterministic: the same spec gives the same sequences.
Documents are read lazily, so memory does not grow with corpus length.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ActscopeError

TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst"}
JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
PARQUET_SUFFIXES = {".parquet"}
SUPPORTED = TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES


@dataclass
class Batch:
    index: int  # batch number in the run
    first_seq: int  # sequence id of row 0
    tokens: "object"  # torch.LongTensor [batch, ctx]


def _is_builtin(name: str) -> bool:
    try:
        from . import builtin_corpora
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
            f"--dataset {spec}: unsupported file type {', '.join(unsupported)} "
            "(expected .txt, .jsonl or .parquet)"
        )
    return sorted(matches)


def iter_documents(spec: str, text_column: str = "text", split: str = "train") -> Iterator[str]:
    """Documents of a built-in corpus, local files or a Hugging Face dataset (streamed)."""
    if _is_builtin(spec):
        from . import builtin_corpora

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


def iter_token_stream(documents: Iterator[str], tokenizer, eos_token_id: int, group: int = 32,
                      group_chars: int = 1 << 15) -> Iterator[list[int]]:
    """Token ids of each document followed by EOS, tokenised in small groups for speed.

    A group ends at `group` documents or `group_chars` characters, whichever comes first:
    a run that stops at --max-tokens then tokenises little more text than it uses.
    """
    pending: list[str] = []
    pending_chars = 0
    # A fast tokenizer's Rust backend, asked for ids only (no offsets), is ~20% quicker.
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None and not hasattr(backend, "encode_batch_fast"):
        backend = None

    def flush():
        if backend is not None:
            encoded = [e.ids for e in backend.encode_batch_fast(pending, add_special_tokens=False)]
        else:
            encoded = tokenizer(pending, add_special_tokens=False, verbose=False)["input_ids"]
        pending.clear()
        for ids in encoded:
            if ids:
                yield list(ids) + [eos_token_id]

    for doc in documents:
        if doc and doc.strip():
            pending.append(doc)
            pending_chars += len(doc)
        if len(pending) >= group or pending_chars >= group_chars:
            yield from flush()
            pending_chars = 0
    if pending:
        yield from flush()


def iter_batches(documents: Iterator[str], tokenizer, *, bos_token_id: int, eos_token_id: int,
                 ctx: int, batch_size: int, max_sequences: int | None) -> Iterator[Batch]:
    """Pack documents into [batch, ctx] token tensors, BOS at position 0 of every row."""
    import torch

    body = ctx - 1
    buffer: list[int] = []
    start = 0  # consumed prefix of buffer; compacted lazily so long documents stay linear
    rows: list[list[int]] = []
    n_seq = 0
    batch_index = 0
    for ids in iter_token_stream(documents, tokenizer, eos_token_id):
        del buffer[:start]
        start = 0
        buffer.extend(ids)
        while len(buffer) - start >= body:
            rows.append([bos_token_id] + buffer[start:start + body])
            start += body
            n_seq += 1
            if len(rows) == batch_size or (max_sequences is not None and n_seq >= max_sequences):
                yield Batch(batch_index, n_seq - len(rows), torch.tensor(rows, dtype=torch.long))
                batch_index += 1
                rows = []
            if max_sequences is not None and n_seq >= max_sequences:
                return
    if rows:
        yield Batch(batch_index, n_seq - len(rows), torch.tensor(rows, dtype=torch.long))
