"""SAEs (SAELens format): resolving a --sae argument, loading it, and encoding with it.

SAEs are resolved and loaded before the model, because an SAE's config says how the
model must be processed for it to see the activations it was trained on.

For a TopK SAE the encode keeps the top-k values and indices it computes on the way to
the dense activations: the indexer reads those k entries per token instead of finding
the firing features again among all of them.

On a CPU an SAE is encoded a few sequences at a time, so that none of its [tokens, d_sae]
temporaries (pre-activations, biased, rescaled, dense output) is larger than
ENCODE_CHUNK_BYTES: glibc hands out larger blocks as fresh memory mappings, and the
kernel zeroing their pages for every batch is costly (docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from actscope.indexer.errors import ActscopeError

ENCODE_CHUNK_BYTES = 16 << 20  # under glibc's largest heap (not mmap) allocation, 32 MB


def resolve_sae_spec(text: str) -> dict[str, Any]:
    from actscope.indexer import bundled

    bundled_dir = bundled.sae_dir(text)
    if bundled_dir is not None:
        return {"kind": "bundled", "name": text}
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "cfg.json").is_file():
            raise ActscopeError(f"--sae {text}: no cfg.json in this directory (expected SAELens format)")
        return {"kind": "path", "path": str(path.resolve())}
    if text.startswith((".", "/", "~")) or "/" not in text:
        raise ActscopeError(f"--sae {text}: no such directory (or give RELEASE/SAE_ID of a SAELens release)")
    release, _, sae_id = text.partition("/")
    return {"kind": "pretrained", "release": release, "sae_id": sae_id}


def load_sae(spec: dict[str, Any], device: str = "cpu"):
    from sae_lens import SAE

    from actscope.indexer import bundled

    try:
        if spec["kind"] == "bundled":
            return SAE.load_from_disk(str(bundled.sae_dir(spec["name"])), device=device)
        if spec["kind"] == "path":
            return SAE.load_from_disk(spec["path"], device=device)
        return SAE.from_pretrained(spec["release"], spec["sae_id"], device=device)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ActscopeError(f"--sae {sae_where(spec)}: cannot load it ({first[:200]})") from exc


def sae_hook_name(sae) -> str:
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise ActscopeError("an SAE config names no hook (cfg.metadata.hook_name is empty)")
    return str(hook)


def sae_processing(saes: list) -> dict[str, Any]:
    """The model processing all SAEs were trained on (they must agree). An SAE that leaves
    model_from_pretrained_kwargs unset was trained on the loader's defaults."""
    from actscope.indexer.model.loading import DEFAULT_PROCESSING

    merged: dict[str, Any] = {}
    for sae in saes:
        kwargs = {**DEFAULT_PROCESSING, **(sae.cfg.metadata.model_from_pretrained_kwargs or {})}
        for key, value in kwargs.items():
            if key in merged and merged[key] != value:
                raise ActscopeError(
                    f"the SAEs need differently processed models ({key}={merged[key]!r} vs {value!r}); "
                    "index them in separate runs"
                )
            merged[key] = value
    return merged


def sae_where(spec: dict[str, Any]) -> str:
    """How the user named an SAE (for messages)."""
    return spec.get("path") or spec.get("name") or f"{spec.get('release')}/{spec.get('sae_id')}"


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
        target = out[start : start + step]
        if recording is not None:
            recording.target = target  # the dense output is scattered straight into `out`
        part = sae.encode(act[start : start + step].to(dtype))
        if part.data_ptr() != target.data_ptr():
            target.copy_(part)
        if recording is not None:
            assert recording.last is not None
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


def record_top_k(sae) -> None:
    """Swap a TopK SAE's activation for the recording one; other SAEs are left alone."""
    from sae_lens.saes.topk_sae import TopK

    activation: Any = getattr(sae, "activation_fn", None)  # exactly TopK: subclasses may differ
    if type(activation) is TopK and not activation.use_sparse_activations:
        sae.activation_fn = _RecordingTopK(activation.k)


def last_top_k(sae) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(values, indices) [batch, pos, k] of the SAE's last encode, if it is a recording TopK SAE."""
    recording = sae.activation_fn
    if not isinstance(recording, _RecordingTopK) or recording.last is None:
        return None
    values, indices = recording.last
    return values.float(), indices
