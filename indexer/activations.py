"""One forward pass per batch, hooks only where needed, SAE encodes on the device.

The indexer and the app's live inference both go through `ActivationRunner`, so a
visitor's text is measured exactly as the corpus was.

For a TopK SAE the encode keeps the top-k values and indices it computes on the way to
the dense activations: the indexer reads those k entries per token instead of finding
the firing features again among all of them.

On a CPU an SAE is encoded a few sequences at a time, so that none of its [tokens, d_sae]
temporaries (pre-activations, biased, rescaled, dense output) is larger than
ENCODE_CHUNK_BYTES: glibc hands out larger blocks as fresh memory mappings, and the
kernel zeroing their pages for every batch cost about a third of a CPU forward pass.
With `reuse_outputs` the runner also writes each SAE's activations into one buffer it
keeps from batch to batch (the indexer's case: it consumes them before the next batch).
"""

from __future__ import annotations

import torch

from .sources import Source, hook_layer

ENCODE_CHUNK_BYTES = 16 << 20  # under glibc's largest heap (not mmap) allocation, 32 MB


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
            if source.kind == "sae":
                _record_top_k(source.sae)
        self.hooks = sorted({source.hook_name for source in sources})
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
        `top_k` is (values, indices) [batch, pos, k] for a TopK SAE (values after the ReLU,
        so the dense activations are these values scattered at these indices), else None.
        """
        captured: set[str] = set()
        out: dict[str, torch.Tensor] = {}

        def capture(act, hook):
            captured.add(hook.name)
            for source in self.sources:
                if source.hook_name == hook.name:
                    out[source.slug] = (act.float() if source.kind == "neuron" else
                                        encode(source.sae, act, self._output_buffer(source, act)))
                    if consume is not None:
                        consume(source.slug, out[source.slug], _last_top_k(source))
            if len(captured) == len(self.hooks):
                # Stop inside the block: e.g. after mlp.hook_post, W_out is never applied.
                raise _AllCaptured

        try:
            self.model.run_with_hooks(
                tokens.to(self.model.cfg.device),
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


def encode(sae, act: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """SAE feature activations [batch, pos, d_sae] float32 for a hook activation, written
    into `out` when given. On a CPU the batch is encoded a few sequences at a time (see
    the module's docstring); each sequence's activations are the same either way."""
    if act.ndim == 4 and not getattr(sae, "hook_z_reshaping_mode", False):
        act = act.reshape(*act.shape[:2], -1)  # attention heads flattened, as SAEs expect
    dtype = next(sae.parameters()).dtype
    d_sae = sae.cfg.d_sae
    if out is None:
        out = torch.empty((*act.shape[:2], d_sae), dtype=torch.float32, device=act.device)
    per_sequence = act.shape[1] * d_sae * 4
    step = max(1, ENCODE_CHUNK_BYTES // per_sequence) if act.device.type == "cpu" else act.shape[0]
    recording = sae.activation_fn if isinstance(sae.activation_fn, _RecordingTopK) else None
    top_ks = []
    for start in range(0, act.shape[0], step):
        target = out[start:start + step]
        if recording is not None:
            recording.target = target  # the dense output is scattered straight into `out`
        part = sae.encode(act[start:start + step].to(dtype))
        if part.data_ptr() != target.data_ptr():
            target.copy_(part)
        if recording is not None:
            top_ks.append(recording.last)
    if recording is not None:
        recording.target = None
        recording.last = (torch.cat([v for v, _ in top_ks]), torch.cat([i for _, i in top_ks]))
    return out


class _RecordingTopK(torch.nn.Module):
    """SAELens' TopK activation (dense output), the same operations, keeping its top-k."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.target: torch.Tensor | None = None  # where `encode` wants the dense output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = torch.topk(x, k=self.k, dim=-1, sorted=False)
        values = values.relu()
        self.last = (values, indices)
        target = self.target
        if target is None or target.shape != x.shape or target.dtype != x.dtype:
            target = torch.empty_like(x)
        return target.zero_().scatter_(-1, indices, values)


def _record_top_k(sae) -> None:
    """Swap a TopK SAE's activation for the recording one; other SAEs are left alone."""
    from sae_lens.saes.topk_sae import TopK

    activation = getattr(sae, "activation_fn", None)
    if type(activation) is TopK and not activation.use_sparse_activations:
        sae.activation_fn = _RecordingTopK(activation.k)


def _last_top_k(source: Source) -> tuple[torch.Tensor, torch.Tensor] | None:
    if source.kind != "sae" or not isinstance(source.sae.activation_fn, _RecordingTopK):
        return None
    values, indices = source.sae.activation_fn.last
    return values.float(), indices
