"""Live inference: the indexed model and its sources, reloaded from the index's specs.

Activations go through the same `ActivationRunner` as the indexer, with the same BOS
handling, so a visitor's text is measured exactly as the corpus was. Not thread-safe:
callers serialise access.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from actscope.indexer.errors import ActscopeError
from actscope.indexer.kinds import Source, reload_source
from actscope.indexer.model.loading import LoadedModel, ModelSpec, load_model
from actscope.indexer.model.runner import ActivationRunner


class LiveModel:
    def __init__(self, loaded: LoadedModel, sources: list[Source], ctx: int, model_slug: str) -> None:
        self.loaded = loaded
        self.ctx = ctx
        self.model_slug = model_slug
        self.sources = {source.slug: source for source in sources}
        # One runner per source: a visitor asks about one source at a time, and each
        # runner stops at its own hook's layer.
        self._runners = {source.slug: ActivationRunner(loaded.model, [source]) for source in sources}

    def tokenize(self, text: str) -> tuple[list[int], bool]:
        """(BOS + token ids of `text`, truncated?) with at most ctx tokens in all."""
        return self.tokenize_batch([text])[0]

    def tokenize_batch(self, texts: list[str]) -> list[tuple[list[int], bool]]:
        """tokenize() of each text, in one call to the tokenizer: the live worker's
        batch pays the wrapper's Python once, not once per text."""
        encoded = self.loaded.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        keep = self.ctx - 1
        return [([self.loaded.bos_token_id] + list(ids[:keep]), len(ids) > keep) for ids in encoded]

    def token_strings(self, ids: list[int]) -> list[str]:
        return self.loaded.tokenizer.batch_decode([[i] for i in ids])

    def runner(self, slug: str) -> ActivationRunner:
        """The runner of source `slug` (for callers that batch their own rows)."""
        if slug not in self._runners:
            raise ActscopeError(f"unknown source {slug!r} (known: {', '.join(self._runners)})")
        return self._runners[slug]

    def activations(self, token_ids: list[int], slug: str) -> np.ndarray:
        """[len(token_ids), n_units] float32 activations of source `slug`."""
        import torch

        if slug not in self._runners:
            raise ActscopeError(f"unknown source {slug!r} (known: {', '.join(self._runners)})")
        if not token_ids or len(token_ids) > self.ctx:
            raise ActscopeError(f"expected 1 to {self.ctx} tokens, got {len(token_ids)}")
        tokens = torch.tensor([token_ids], dtype=torch.long)
        acts = self._runners[slug](tokens)[slug][0]
        return acts.cpu().numpy().astype(np.float32, copy=False)

    def activations_batch(self, batch: list[list[int]], slug: str) -> list[np.ndarray]:
        """Several token lists in one forward pass: [len(ids), n_units] float32 each.

        Sequences are right-padded; attention is causal, so the padding after a
        sequence never changes its activations. (Added for the app's live batching.)
        """
        import torch

        if slug not in self._runners:
            raise ActscopeError(f"unknown source {slug!r} (known: {', '.join(self._runners)})")
        longest = max((len(ids) for ids in batch), default=0)
        if not batch or min(len(ids) for ids in batch) < 1 or longest > self.ctx:
            raise ActscopeError(f"expected 1 to {self.ctx} tokens per sequence")
        pad = self.loaded.eos_token_id
        tokens = torch.tensor([list(ids) + [pad] * (longest - len(ids)) for ids in batch], dtype=torch.long)
        acts = self._runners[slug](tokens)[slug].cpu().numpy().astype(np.float32, copy=False)
        out = [acts[i, : len(ids)] for i, ids in enumerate(batch)]
        tail = self.sources[slug].kind.tail  # e.g. no next token after a sequence's last: not the padding's
        for row in out:
            if tail:
                row[-tail:] = np.nan
        return out

    def attention_rows(self, hook: str, sequences: list[list[int]]) -> list[np.ndarray]:
        """The attention pattern at `hook` of each token prefix's last position, all heads:
        [n_heads, len(ids)] float32 per prefix (rows of A[d, s] with d the last token).
        One forward pass per chunk of prefixes, right-padded (attention is causal)."""
        import torch

        from actscope.indexer.kinds import hook_layer

        if hook not in self.loaded.model.hook_dict:
            raise ActscopeError(f"the model has no hook {hook}")
        rows: list[np.ndarray] = []
        pad = self.loaded.eos_token_id
        for first in range(0, len(sequences), ATTENTION_CHUNK):
            chunk = sequences[first : first + ATTENTION_CHUNK]
            longest = max(len(ids) for ids in chunk)
            if min(len(ids) for ids in chunk) < 1 or longest > self.ctx:
                raise ActscopeError(f"expected 1 to {self.ctx} tokens per sequence")
            tokens = torch.tensor([list(ids) + [pad] * (longest - len(ids)) for ids in chunk], dtype=torch.long)
            seen: dict[str, torch.Tensor] = {}

            def keep(pattern, hook):
                seen["pattern"] = pattern  # [batch, head, d, s]

            with torch.inference_mode():
                self.loaded.model.run_with_hooks(
                    tokens, return_type=None, stop_at_layer=hook_layer(hook) + 1, fwd_hooks=[(hook, keep)]
                )
            pattern = seen["pattern"].float().cpu().numpy()
            rows += [pattern[i, :, len(ids) - 1, : len(ids)] for i, ids in enumerate(chunk)]
        return rows


ATTENTION_CHUNK = 16  # prefixes per forward pass of attention_rows: bounds its memory


def load_live(
    model_row: dict[str, Any],
    source_rows: list[dict[str, Any]],
    device: str = "cpu",
    unit_vectors: Callable[[str], Any] | None = None,
) -> LiveModel:
    """Load the model and SAEs an index was built with (rows of its models/sources tables).
    `unit_vectors(slug)`: the vectors the index stores for a source's units (None if
    none), which its kind reloads from row["unit_vectors"] (random directions)."""
    spec = ModelSpec.from_dict(json.loads(model_row["spec"]))
    loaded = load_model(spec, device)
    rows = []
    for row in source_rows:
        vectors = unit_vectors(row["slug"]) if unit_vectors is not None else None
        rows.append(row if vectors is None else {**row, "unit_vectors": vectors})
    sources = [reload_source(row, device, loaded.model) for row in rows]
    return LiveModel(loaded, sources, int(model_row["ctx"]), model_row["model"])
