"""The tables a run writes after its last batch: the units' (from accumulator state) and
the facts read off the weights (logit tables, directions, vocabulary).

At a hundred thousand units these are most of a short run's fixed cost. The logit tables
are one large matmul plus a top-k per unit: they run on every core (or the device),
a part of the units at a time, and each part goes to the writer's thread, which inserts
it while the next part is computed. The vocabulary is decoded on a helper thread
meanwhile (Python work, while the matmuls run without the GIL).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

LOGIT_ROWS_PER_INSERT = 16384  # units per logits insert: the writer inserts one while the next is computed


def write_unit_tables(writer, model_slug: str, sources: list, accumulators: dict, model, ctx: int) -> None:
    """The examples, unit_stats and bands of `sources` from their accumulators.

    Each table in one insert, every source's rows in it: DuckDB writes a large insert
    straight to the file in full row groups. The examples first: they take DuckDB longest.
    """
    from actscope.indexer.accumulate.finalize import example_rows, unit_rows

    writer.write_table(
        "examples",
        pa.concat_tables([example_rows(model_slug, s.slug, accumulators[s.slug], ctx) for s in sources]),
    )
    rows = [unit_rows(model_slug, s.slug, accumulators[s.slug], s.kind.cos_in_out(model, s)) for s in sources]
    writer.write_table("unit_stats", pa.concat_tables([stats for stats, _ in rows]))
    writer.write_table("bands", pa.concat_tables([bands for _, bands in rows]))


def write_logit_tables(writer, model_slug: str, sources: list, model) -> None:
    """Each source's logit table, LOGIT_ROWS_PER_INSERT units per insert, on every core."""
    import torch

    from actscope.indexer.store.writer import fixed_width_lists, repeated
    from actscope.indexer.weights import logit_chunks

    with torch.inference_mode():
        for source in sources:
            for first, table in logit_chunks(model, source, LOGIT_ROWS_PER_INSERT):
                n = len(table.top_ids)
                writer.write_table(
                    "logits",
                    pa.table(
                        {
                            "model": repeated(model_slug, n),
                            "source": repeated(source.slug, n),
                            "unit": pa.array(np.arange(first, first + n, dtype=np.int32)),
                            "top_ids": fixed_width_lists(table.top_ids.int().numpy()),
                            "top_values": fixed_width_lists(table.top_values.float().numpy()),
                            "bottom_ids": fixed_width_lists(table.bottom_ids.int().numpy()),
                            "bottom_values": fixed_width_lists(table.bottom_values.float().numpy()),
                        }
                    ),
                )


def direction_table(model_slug: str, sources: list) -> pa.Table | None:
    """The vectors the kinds store for their sources' units (the directions table)."""
    from actscope.indexer.store.writer import fixed_width_lists, repeated

    tables = [
        pa.table(
            {
                "model": repeated(model_slug, source.n_units),
                "source": repeated(source.slug, source.n_units),
                "unit": pa.array(np.arange(source.n_units, dtype=np.int32)),
                "direction": fixed_width_lists(vectors.numpy()),
            }
        )
        for source in sources
        if (vectors := source.kind.stored_vectors(source)) is not None
    ]
    return pa.concat_tables(tables) if tables else None


def decoder_table(model_slug: str, sources: list, model: Any) -> pa.Table | None:
    """The output directions of the sources whose kind lists decoder-cosine neighbours
    (SAE features: their decoder rows), for the app's neighbours (the decoders table)."""
    from actscope.indexer.store.writer import fixed_width_lists, repeated

    tables = [
        pa.table(
            {
                "model": repeated(model_slug, source.n_units),
                "source": repeated(source.slug, source.n_units),
                "unit": pa.array(np.arange(source.n_units, dtype=np.int32)),
                "direction": fixed_width_lists(vectors.detach().float().cpu().numpy()),
            }
        )
        for source in sources
        if source.kind.decoder_neighbours and (vectors := source.kind.output_directions(model, source)) is not None
    ]
    return pa.concat_tables(tables) if tables else None


def vocab_table(loaded: Any) -> pa.Table:
    """Every token of the model's vocabulary: its id, decoded text and raw bytes."""
    from actscope.indexer.model.token_bytes import vocab_bytes
    from actscope.indexer.store.writer import repeated

    vocab_size = int(loaded.model.cfg.d_vocab)
    tokens = loaded.tokenizer.batch_decode([[i] for i in range(vocab_size)])
    raw = vocab_bytes(loaded.tokenizer, vocab_size)
    return pa.table(
        {
            "model": repeated(loaded.spec.slug, vocab_size),
            "token_id": pa.array(np.arange(vocab_size, dtype=np.int32)),
            "token": pa.array(tokens),
            "token_bytes": pa.array(raw, type=pa.binary()),
        }
    )
