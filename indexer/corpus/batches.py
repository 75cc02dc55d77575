"""Documents tokenised and packed into fixed-length sequences, in batches.

Every sequence is BOS followed by ctx-1 tokens of the document stream, where documents
are separated by EOS. Packing is deterministic: the same documents give the same sequences.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Batch:
    index: int  # batch number in the run
    first_seq: int  # sequence id of row 0
    tokens: Any  # torch.LongTensor [batch, ctx]


def iter_token_stream(
    documents: Iterator[str], tokenizer, eos_token_id: int, group: int = 32, group_chars: int = 1 << 15
) -> Iterator[list[int]]:
    """Token ids of each document followed by EOS, tokenised in small groups for speed.

    A group ends at `group` documents or `group_chars` characters, whichever comes first:
    a run that stops at --max-tokens then tokenises little more text than it uses.
    """
    pending: list[str] = []
    pending_chars = 0
    # A fast tokenizer's Rust backend, asked for ids only (no offsets), skips work we never use.
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


def iter_batches(
    documents: Iterator[str],
    tokenizer,
    *,
    bos_token_id: int,
    eos_token_id: int,
    ctx: int,
    batch_size: int,
    max_sequences: int | None,
    first_sequence: int = 0,
) -> Iterator[Batch]:
    """Pack documents into [batch, ctx] token tensors, BOS at position 0 of every row.

    `first_sequence` (a multiple of batch_size): the sequences before it are packed but not
    yielded; the first batch is the one the whole stream has there (a shard's stream)."""
    import torch

    if first_sequence % batch_size:
        raise ValueError(f"first_sequence {first_sequence} is not a multiple of batch_size {batch_size}")
    body = ctx - 1
    buffer: list[int] = []
    start = 0  # consumed prefix of buffer; compacted lazily so long documents stay linear
    rows: list[list[int]] = []
    n_seq = 0
    batch_index = first_sequence // batch_size
    for ids in iter_token_stream(documents, tokenizer, eos_token_id):
        del buffer[:start]
        start = 0
        buffer.extend(ids)
        while len(buffer) - start >= body:
            if n_seq < first_sequence:  # before the shard: counted, never built
                start += body
                n_seq += 1
                if max_sequences is not None and n_seq >= max_sequences:
                    return
                continue
            rows.append([bos_token_id] + buffer[start : start + body])
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


def count_sequences(documents: Iterator[str], tokenizer, *, eos_token_id: int, ctx: int) -> int:
    """The number of sequences iter_batches packs `documents` into (no limit): the corpus
    is tokenised, nothing is kept."""
    return sum(len(ids) for ids in iter_token_stream(documents, tokenizer, eos_token_id)) // (ctx - 1)
