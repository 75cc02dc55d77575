"""Sources: families of units at one hook (MLP neurons, or the features of one SAE).

SAEs are resolved and loaded before the model, because an SAE's config says how the
model must be processed for it to see the activations it was trained on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ActscopeError

NEURON_HOOK = re.compile(r"^blocks\.(\d+)\.mlp\.(hook_pre|hook_mid|hook_post|hook_pre_linear)$")
LAYER = re.compile(r"^blocks\.(\d+)\.")

NEURON_SLUG_SUFFIX = {"hook_post": "mlp", "hook_pre": "mlp-pre", "hook_mid": "mlp-mid",
                      "hook_pre_linear": "mlp-pre-linear"}
SAE_SLUG_SUFFIX = {"hook_resid_post": "res-sae", "hook_resid_pre": "res-pre-sae",
                   "hook_resid_mid": "res-mid-sae", "hook_mlp_out": "mlp-out-sae",
                   "hook_attn_out": "att-out-sae", "attn.hook_z": "att-sae",
                   "mlp.hook_post": "mlp-sae"}


@dataclass
class Source:
    slug: str
    hook_name: str
    kind: str  # 'neuron' | 'sae'
    layer: int
    n_units: int
    spec: dict[str, Any] = field(default_factory=dict)  # how to reload an SAE
    sae: Any = None  # the loaded SAE module; never serialised

    def row(self) -> dict[str, Any]:
        return {"slug": self.slug, "hook_name": self.hook_name, "kind": self.kind,
                "layer": self.layer, "n_units": self.n_units, "spec": json.dumps(self.spec)}


def hook_layer(hook_name: str) -> int:
    match = LAYER.match(hook_name)
    return int(match.group(1)) if match else -1


def sae_slug(hook_name: str) -> str:
    layer = hook_layer(hook_name)
    rest = hook_name.split(".", 2)[2] if layer >= 0 else hook_name
    suffix = SAE_SLUG_SUFFIX.get(rest, re.sub(r"[^a-z0-9]+", "-", rest.lower()).strip("-") + "-sae")
    return f"{layer}-{suffix}" if layer >= 0 else suffix


def neuron_sources(model, hooks: list[str]) -> list[Source]:
    """Neuron sources for `hooks` (default: every layer's mlp.hook_post)."""
    n_layers = model.cfg.n_layers
    hooks = hooks or [f"blocks.{layer}.mlp.hook_post" for layer in range(n_layers)]
    sources = []
    for hook in hooks:
        match = NEURON_HOOK.match(hook)
        if not match or hook not in model.hook_dict:
            available = sorted(h for h in model.hook_dict if NEURON_HOOK.match(h))
            raise ActscopeError(
                f"--neurons {hook}: not an MLP neuron hook of this model "
                f"(available: {', '.join(available[:8])}{' ...' if len(available) > 8 else ''})"
            )
        layer = int(match.group(1))
        sources.append(Source(f"{layer}-{NEURON_SLUG_SUFFIX[match.group(2)]}", hook, "neuron",
                              layer, int(model.cfg.d_mlp)))
    return sources


def resolve_sae_spec(text: str) -> dict[str, Any]:
    from . import bundled

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

    from . import bundled

    try:
        if spec["kind"] == "bundled":
            return SAE.load_from_disk(str(bundled.sae_dir(spec["name"])), device=device)
        if spec["kind"] == "path":
            return SAE.load_from_disk(spec["path"], device=device)
        return SAE.from_pretrained(spec["release"], spec["sae_id"], device=device)
    except Exception as exc:
        where = spec.get("path") or spec.get("name") or f"{spec.get('release')}/{spec.get('sae_id')}"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ActscopeError(f"--sae {where}: cannot load it ({first[:200]})") from exc


def sae_hook_name(sae) -> str:
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise ActscopeError("an SAE config names no hook (cfg.metadata.hook_name is empty)")
    return str(hook)


def sae_processing(saes: list) -> dict[str, Any]:
    """The model_from_pretrained_kwargs all SAEs agree on (they must agree)."""
    merged: dict[str, Any] = {}
    for sae in saes:
        kwargs = dict(sae.cfg.metadata.model_from_pretrained_kwargs or {})
        for key, value in kwargs.items():
            if key in merged and merged[key] != value:
                raise ActscopeError(
                    f"the SAEs need differently processed models ({key}={merged[key]!r} vs {value!r}); "
                    "index them in separate runs"
                )
            merged[key] = value
    return merged


def sae_sources(model, saes: list, specs: list[dict[str, Any]], taken: set[str]) -> list[Source]:
    """Check each SAE against the model and describe it as a source."""
    import torch

    hooks = [sae_hook_name(sae) for sae in saes]
    for hook, spec in zip(hooks, specs):
        if hook not in model.hook_dict:
            raise ActscopeError(f"--sae {_where(spec)}: hook {hook} does not exist in this model")
    dims = hook_dims(model, hooks) if hooks else {}
    sources = []
    for sae, hook, spec in zip(saes, hooks, specs):
        d_in = int(sae.cfg.d_in)
        if dims[hook] != d_in:
            raise ActscopeError(
                f"--sae {_where(spec)}: d_in is {d_in} but the model's {hook} has width {dims[hook]}"
            )
        slug = sae_slug(hook)
        suffix = 2
        while slug in taken:
            slug = f"{sae_slug(hook)}-{suffix}"
            suffix += 1
        taken.add(slug)
        sae.to(model.cfg.device)
        sae.eval()
        torch.set_grad_enabled(False)
        sources.append(Source(slug, hook, "sae", hook_layer(hook), int(sae.cfg.d_sae), spec, sae))
    return sources


def _where(spec: dict[str, Any]) -> str:
    return spec.get("path") or spec.get("name") or f"{spec.get('release')}/{spec.get('sae_id')}"


def hook_dims(model, hooks: list[str]) -> dict[str, int]:
    """Width of each hook's activation (heads flattened), from a two-token forward."""
    import torch

    seen: dict[str, int] = {}

    def record(act, hook):
        seen[hook.name] = int(act[0, 0].numel())

    tokens = torch.zeros((1, 2), dtype=torch.long, device=model.cfg.device)
    model.run_with_hooks(tokens, return_type=None, fwd_hooks=[(h, record) for h in set(hooks)])
    return seen
