"""A unit's example sets as JSON, serialised from pieces encoded once per model.

An example's `tokens`, `token_ids` and `token_bytes` depend only on its window of the
corpus. When the corpus fits the store's memory budget, every corpus token's three JSON
values are encoded once, when the app starts, into one byte string each, in corpus order, with
each token's offset in it: a window's values are then one slice of each string, and
only the activations are serialised per request (by orjson). The
bytes are those orjson writes for pages.example_dicts (tests/test_example_json.py
compares them on every unit of an index).
"""

from __future__ import annotations

from functools import lru_cache
from operator import attrgetter

import numpy as np
import orjson

from actscope.indexer.store.reader import Example, Store

# About 30 bytes a corpus token (the three strings and their offsets): a larger corpus
# is serialised per request instead.
MAX_TOKENS = 4_000_000

_EXAMPLE = (
    b'{"seq":%d,"pos":%d,"act":%b,"start":%d,"tokens":[%b],"token_ids":[%b],"token_bytes":[%b],"acts":%b,"focus":%d}'
)


_FIELDS = (attrgetter("seq"), attrgetter("pos"), attrgetter("start"), attrgetter("acts"))
_ACT = attrgetter("act")


@lru_cache(maxsize=64)
def _list_format(n: int) -> bytes:
    """The % format of a JSON list of `n` examples."""
    return b"[" + b",".join([_EXAMPLE] * n) + b"]"


class CorpusJSON:
    """Every corpus token of one model as its three JSON values (see the module)."""

    def __init__(self, texts: list[bytes], offsets: list[np.ndarray], seq_first: np.ndarray, seq_stop: np.ndarray):
        self.texts = texts  # tokens, token ids, token bytes: each value followed by a comma
        self.offsets = offsets  # where each corpus position's value starts in each text, and the end
        # By sequence number: the corpus positions of its first token and past its last
        # (0 and -1 for a number the corpus lacks).
        self.seq_first, self.seq_stop = seq_first, seq_stop

    @classmethod
    def build(cls, store: Store, model: str, max_tokens: int = MAX_TOKENS) -> CorpusJSON | None:
        """The model's corpus encoded and held within the store's memory budget, or None
        when its sequences or the encoding do not fit the budget, the corpus is larger
        than `max_tokens`, or a token id lies outside the vocabulary (such sets are
        serialised per request)."""
        info = store.model(model)
        if info is None or not store.sequences_held(model):
            return None
        vocab = store.vocab(model)
        n_vocab = len(vocab)
        seq_first = np.zeros(info.n_sequences, dtype=np.int64)
        seq_stop = np.full(info.n_sequences, -1, dtype=np.int64)
        chunks: list[list[int]] = []
        total = 0
        for seq in range(info.n_sequences):
            ids = store.sequence(model, seq)
            if ids is None:
                continue
            if total + len(ids) > max_tokens or (ids and (min(ids) < 0 or max(ids) >= n_vocab)):
                return None
            seq_first[seq], seq_stop[seq] = total, total + len(ids)
            chunks.append(ids)
            total += len(ids)
        flat = [i for ids in chunks for i in ids]
        hexes = store.token_hex(model, list(range(n_vocab)))
        per_token = [
            [orjson.dumps(t) + b"," for t in vocab],
            [b"%d," % i for i in range(n_vocab)],
            [b"null," if h is None else orjson.dumps(h) + b"," for h in hexes],
        ]
        ids_np = np.asarray(flat, dtype=np.intp)
        texts, offsets = [], []
        for pieces in per_token:
            texts.append(b"".join(map(pieces.__getitem__, flat)))
            lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=n_vocab)
            offsets.append(np.concatenate(([0], np.cumsum(lengths[ids_np]))))
        corpus = cls(texts, offsets, seq_first, seq_stop)
        return corpus if store.hold(("corpus json", model), corpus, corpus.nbytes) else None

    @property
    def nbytes(self) -> int:
        return sum(map(len, self.texts)) + sum(o.nbytes for o in self.offsets) + self.seq_first.nbytes * 2

    def example_sets(self, sets: list[list[Example]]) -> list[orjson.Fragment] | None:
        """Each set of examples as a JSON list (the bytes orjson writes for its
        example_dicts), or None if an example lies outside the corpus encoded. All sets
        at once: a unit's top examples and bands are a hundred examples."""
        examples = [ex for s in sets for ex in s]
        k = len(examples)
        if not k:
            return [orjson.Fragment(b"[]") for _ in sets]
        seqs, pos, start, acts = (list(map(get, examples)) for get in _FIELDS)
        seq = np.array(seqs)
        if seq.min() < 0 or seq.max() >= len(self.seq_first):
            return None
        first = self.seq_first[seq] + start
        last = first + np.fromiter(map(len, acts), dtype=np.int64, count=k)
        if not (last <= self.seq_stop[seq]).all():
            return None  # a sequence the corpus lacks (its stop is -1), or past its end
        where = np.concatenate((first, last))
        # Each window's values: one slice of each text, without the last comma (an empty
        # window: an empty slice).
        cuts = [off[where] for off in self.offsets]
        tokens, ids, hexes = (
            map(text.__getitem__, map(slice, cut[:k].tolist(), np.maximum(cut[k:] - 1, cut[:k]).tolist()))
            for text, cut in zip(self.texts, cuts)
        )
        args: list = [None] * (9 * k)
        args[0::9], args[1::9], args[3::9] = seqs, pos, start
        args[7::9] = map(orjson.dumps, acts)
        args[2::9] = orjson.dumps(list(map(_ACT, examples)))[1:-1].split(b",")
        args[4::9], args[5::9], args[6::9] = tokens, ids, hexes
        args[8::9] = (np.array(pos) - start).tolist()
        out = []
        a = 0
        for s in sets:
            b = a + 9 * len(s)
            out.append(orjson.Fragment(_list_format(len(s)) % tuple(args[a:b])))
            a = b
        return out
