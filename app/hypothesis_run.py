"""A regex hypothesis test itself, as it runs in its thread: the sequences decoded and
matched, the unit run on them in batches through the live queue, and the figures and
examples of each stratum (the random sample, and the sequences of the top examples).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actscope.app import pages, params, regex_match
from actscope.app.errors import not_found, unavailable
from actscope.app.hypothesis_figures import TokenAt, disagreements, figures
from actscope.app.hypothesis_jobs import HypothesisJobs, Job
from actscope.app.live_service import LiveService
from actscope.indexer.store.reader import Example, Store

DEFAULT_SEQUENCES = 256
EXAMPLES_SHOWN = 5  # disagreement examples of each kind, per stratum
MATCH_TIME_LIMIT_S = 2.0  # all regex matching of one test (a catastrophic pattern stops here)
TIME_LIMIT_S = 120.0  # one whole test
BATCH_SEQUENCES = 32  # sequences per forward pass
BATCH_VALUES = 1 << 24  # at most this many activations (units x tokens) per forward pass
DEFAULT_WINDOW = (24, 8)  # tokens before and after an example's focus, if the index does not say


@dataclass(frozen=True)
class HypothesisQuery:
    regex: str
    sequences: int = DEFAULT_SEQUENCES
    seed: int = 0
    threshold: float | None = None  # None: the unit's default


@dataclass
class Plan:
    """One test, resolved against the index: what runs, and on what."""

    model: str
    source: str
    index: int
    query: HypothesisQuery
    threshold: float
    sample: list[int]
    top: list[int]  # the sequences of the unit's top examples, by rank
    ctx: int
    tail: int
    scale: float
    key: tuple = field(init=False)

    def __post_init__(self) -> None:
        q = self.query
        self.key = (self.model, self.source, self.index, q.regex, q.sequences, q.seed, self.threshold)


@dataclass
class Spent:
    """Model tokens a test ran (what the client pays)."""

    tokens: int = 0


def run(store: Store, live: LiveService, jobs: HypothesisJobs, p: Plan, job: Job, spent: Spent) -> dict[str, Any]:
    """The test, in its thread: decode and match, run the model, score."""
    deadline = time.monotonic() + TIME_LIMIT_S
    pattern = regex_match.compile_pattern(p.query.regex)
    seqs = list(dict.fromkeys(p.sample + p.top))
    job.progress("reading the sequences")
    ids = {s: _sequence(store, p.model, s) for s in seqs}
    job.progress("decoding the sequences")
    decoded = _decode(store, live, jobs, p.model, seqs, ids)
    job.progress("matching the regex")
    match_deadline = time.monotonic() + MATCH_TIME_LIMIT_S
    try:
        matched = {s: regex_match.matched_tokens(pattern, decoded[s], match_deadline) for s in seqs}
    except TimeoutError:
        raise params.FieldError(
            "regex",
            f"The regular expression took more than {MATCH_TIME_LIMIT_S:g} s to match {len(seqs)} sequences: "
            "it probably backtracks catastrophically (nested repeats such as (a+)+). Simplify it.",
        ) from None
    acts = _activations(live, jobs, p, job, seqs, ids, spent, deadline)
    job.progress("scoring")
    window = _window(store)
    sample = _stratum(store, p, p.sample, ids, acts, matched, window)
    return {
        "model": p.model,
        "source": p.source,
        "index": p.index,
        "regex": p.query.regex,
        "sequences": p.query.sequences,
        "seed": p.query.seed,
        "threshold": p.threshold,
        "threshold_default": p.query.threshold is None,
        **sample,
        "top_examples": _stratum(store, p, p.top, ids, acts, matched, window),
    }


def _sequence(store: Store, model: str, seq: int) -> list[int]:
    found = store.sequence(model, seq)
    if found is None:
        raise not_found(f"No sequence {seq} in the index of {model!r}.")
    return found


def _decode(store: Store, live: LiveService, jobs: HypothesisJobs, model: str, seqs: list[int], ids) -> dict:
    """Each sequence's text and token spans (kept for the next test). The tokenizer is
    used in the model worker only: live requests tokenize there too."""
    out = {s: jobs.decoded.get((model, s)) for s in seqs}
    missing = [s for s in seqs if out[s] is None]
    if missing:
        token_bytes = store.vocab_bytes(model)

        def task(live_model) -> list[regex_match.Decoded]:
            loaded = live_model.loaded
            tokenizer = loaded.tokenizer
            special = {loaded.bos_token_id, loaded.eos_token_id, *(getattr(tokenizer, "all_special_ids", None) or [])}
            special |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items() if t.special}
            backend = getattr(tokenizer, "backend_tokenizer", None)
            if backend is not None:

                def decode_batch(lists):
                    return backend.decode_batch(lists, skip_special_tokens=False)
            else:

                def decode_batch(lists):
                    return tokenizer.batch_decode(lists, skip_special_tokens=False, clean_up_tokenization_spaces=False)

            return regex_match.decode_sequences([ids[s] for s in missing], decode_batch, special, token_bytes)

        for s, found in zip(missing, live.run_task(task)):
            out[s] = found
            jobs.decoded.put((model, s), found)
    return out


def _activations(
    live: LiveService, jobs: HypothesisJobs, p: Plan, job: Job, seqs: list[int], ids, spent: Spent, deadline: float
) -> dict[int, np.ndarray]:
    """The unit's activation on every token of each sequence: known ones from the cache,
    the others run through the model in batches (each a turn of the live queue)."""
    out = {s: jobs.acts.get((p.model, p.source, p.index, s)) for s in seqs}
    missing = [s for s in seqs if out[s] is None]
    n_units = live.sources[p.source].n_units if p.source in live.sources else 1
    per_batch = max(1, min(BATCH_SEQUENCES, BATCH_VALUES // max(1, n_units * p.ctx)))
    batches = [missing[i : i + per_batch] for i in range(0, len(missing), per_batch)]
    for done, batch in enumerate(batches):
        job.progress("running the model", done, len(batches))
        if time.monotonic() > deadline:
            raise unavailable(f"The hypothesis test took longer than {TIME_LIMIT_S:g} s; try fewer sequences.")
        rows = [ids[s] for s in batch]
        unit = p.index

        def task(live_model, rows=rows) -> list[np.ndarray]:
            return [a[:, unit].copy() for a in live_model.activations_batch(rows, p.source)]

        for s, row, values in zip(batch, rows, live.run_task(task)):
            out[s] = values
            jobs.acts.put((p.model, p.source, p.index, s), values)
            spent.tokens += len(row)
    job.progress("running the model", len(batches), len(batches))
    return out


def _window(store: Store) -> tuple[int, int]:
    config = store.meta.get("run_config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            config = None
    window = config.get("window") if isinstance(config, dict) else None
    if isinstance(window, list | tuple) and len(window) == 2:
        return int(window[0]), int(window[1])
    return DEFAULT_WINDOW


def _stratum(store: Store, p: Plan, seqs: list[int], ids, acts, matched, window: tuple[int, int]) -> dict[str, Any]:
    """Figures and disagreement examples over every measured token of `seqs` but BOS."""
    seq_parts, pos_parts, act_parts, match_parts = [], [], [], []
    for s in seqs:
        values = acts[s]
        keep = np.flatnonzero(~np.isnan(values))
        keep = keep[keep > 0]
        seq_parts.append(np.full(keep.size, s, dtype=np.int64))
        pos_parts.append(keep)
        act_parts.append(values[keep].astype(np.float64))
        match_parts.append(matched[s][keep])
    seq_all = np.concatenate(seq_parts) if seqs else np.zeros(0, dtype=np.int64)
    pos_all = np.concatenate(pos_parts) if seqs else np.zeros(0, dtype=np.int64)
    act_all = np.concatenate(act_parts) if seqs else np.zeros(0)
    match_all = np.concatenate(match_parts) if seqs else np.zeros(0, dtype=bool)
    found = figures(act_all, match_all, p.threshold)
    fp, fn = disagreements(seq_all, pos_all, act_all, match_all, p.threshold, EXAMPLES_SHOWN)
    return {
        "n_sequences": len(seqs),
        "seqs": seqs,
        **found.as_dict(),
        "false_positives": _examples(store, p, fp, ids, acts, matched, window),
        "false_negatives": _examples(store, p, fn, ids, acts, matched, window),
    }


def _examples(store: Store, p: Plan, tokens: list[TokenAt], ids, acts, matched, window) -> list[dict[str, Any]]:
    """Tokens as examples (the unit page's shape), each with which of its tokens matched."""
    before, after = window
    examples, flags = [], []
    for t in tokens:
        length = len(ids[t.seq]) - p.tail
        start, end = max(0, t.pos - before), min(length, t.pos + after + 1)
        values = acts[t.seq][start:end].tolist()
        examples.append(Example(t.seq, t.pos, t.act, start, ids[t.seq][start:end], values))
        flags.append(matched[t.seq][start:end].tolist())
    out = pages.example_dicts(store, p.model, examples)
    for ex, marks in zip(out, flags):
        ex["matched"] = marks
    return out
