"""One forward pass per batch, hooks only where needed, every source's units computed
on the device by its kind (an SAE's encode, for SAE features).

The indexer and the app's live inference both go through `ActivationRunner`, so a
visitor's text is measured exactly as the corpus was. With `reuse_outputs` the runner
writes each source's activations, where its kind computes them into a buffer, into one
buffer it keeps from batch to batch (the indexer's case: it consumes them before the
next batch).
"""

from __future__ import annotations

from functools import partial

import torch

from actscope.indexer.kinds import Forward, Source, hook_layer


class _AllCaptured(Exception):
    """Raised by the last capture hook: nothing after it in the forward pass is needed."""


class ActivationRunner:
    def __init__(self, model, sources: list[Source], reuse_outputs: bool = False) -> None:
        """`reuse_outputs`: SAE activations are written into one buffer per source, reused
        by the next call (so a caller must be done with them by then)."""
        self.model = model
        self.sources = sources
        self._outputs: dict[str, torch.Tensor] | None = {} if reuse_outputs else None
        for source in sources:
            source.kind.prepare(source)
        # Each source's hooks: its own first, then those its kind also reads (kept during the pass).
        self.source_hooks = {s.slug: (s.hook_name, *s.kind.extra_hooks(s)) for s in sources}
        self.kept = {hook for hooks in self.source_hooks.values() if len(hooks) > 1 for hook in hooks}
        self.hooks = sorted({hook for hooks in self.source_hooks.values() for hook in hooks})
        layers = [hook_layer(hook) for hook in self.hooks]
        # Blocks after the last hooked one are skipped entirely; so is the unembedding.
        self.stop_at_layer = max(layers) + 1 if layers and min(layers) >= 0 else None
        if self.stop_at_layer is not None and self.stop_at_layer >= model.cfg.n_layers:
            self.stop_at_layer = None

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, consume=None) -> dict[str, torch.Tensor]:
        """Activations per source slug, each [batch, pos, n_units] float32.

        `consume(slug, activations, top_k)`, if given, is called for each source as soon as
        its activations exist, inside the forward pass: they are then still in the caches.
        `top_k` is what the kind kept of the top-k (`UnitKind.last_top_k`): (values, indices)
        [batch, pos, k] for a TopK SAE, whose scatter is the activations; else None.
        """
        tokens = tokens.to(self.model.cfg.device)
        captured: set[str] = set()
        out: dict[str, torch.Tensor] = {}
        forward = Forward(tokens, model=self.model)

        def capture(act, hook):
            captured.add(hook.name)
            if hook.name in self.kept:
                forward.acts[hook.name] = act
            for source in self.sources:
                hooks = self.source_hooks[source.slug]
                if source.slug in out or hook.name not in hooks or not captured.issuperset(hooks):
                    continue
                own = forward.acts.get(source.hook_name, act) if len(hooks) > 1 else act
                out[source.slug] = source.kind.activations(
                    source, own, partial(self._output_buffer, source, own), forward
                )
                if consume is not None:
                    consume(source.slug, out[source.slug], source.kind.last_top_k(source))
            if len(captured) == len(self.hooks):
                # Stop inside the block: e.g. after mlp.hook_post, W_out is never applied.
                raise _AllCaptured

        try:
            self.model.run_with_hooks(
                tokens,
                return_type=None,
                stop_at_layer=self.stop_at_layer,
                fwd_hooks=[(hook, capture) for hook in self.hooks],
            )
        except _AllCaptured:
            pass
        return {source.slug: out[source.slug] for source in self.sources}

    def _output_buffer(self, source: Source, act: torch.Tensor) -> torch.Tensor | None:
        if self._outputs is None:
            return None
        return self.output_buffer(source.slug, (*act.shape[:2], source.n_units), act.device)

    def output_buffer(self, slug: str, shape: tuple[int, ...], device) -> torch.Tensor:
        """A float32 tensor of `shape` for source `slug`: with `reuse_outputs`, the buffer the
        next call writes that source's activations into (already paged in), else a new one."""
        if self._outputs is None:
            return torch.empty(shape, dtype=torch.float32, device=device)
        buffer = self._outputs.get(slug)
        if buffer is None or tuple(buffer.shape) != tuple(shape) or buffer.device != torch.device(device):
            buffer = self._outputs[slug] = torch.empty(shape, dtype=torch.float32, device=device)
        return buffer
