"""Loading TransformerLens models: official names, local HF directories (hf_dir.py),
native directories, and the bundled model.

A model spec is plain data (`ModelSpec`) that the index records, so the app can load
exactly the same model again for live inference.

Native format (what `save_native` writes and the bundled model uses), one directory:
  actscope_model.json   {"format": "actscope-native", "version": 1, "name": ...,
                         "config": HookedTransformerConfig.to_dict(), "bos_token": ...,
                         "eos_token": ...}
  model.safetensors     the HookedTransformer state dict, used as is (no processing)
  tokenizer.json        a `tokenizers` tokenizer
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from actscope.indexer.errors import ActscopeError

NATIVE_CONFIG = "actscope_model.json"
NATIVE_WEIGHTS = "model.safetensors"
NATIVE_TOKENIZER = "tokenizer.json"

# TransformerLens' own defaults for from_pretrained; SAEs may override some of them
# (SAELens configs carry model_from_pretrained_kwargs).
DEFAULT_PROCESSING = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
}


NATIVE_KINDS = ("native", "bundled")  # model kinds stored in actscope's native format
RESERVED_NAMES = ("api", "static", "docs", "embed", "favicon.ico")  # the site's own top-level paths
SLUG_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")


@dataclass
class ModelSpec:
    """How to load a model: kind is 'official', 'hf_dir', 'native' or 'bundled' (a model
    shipped with the package, found by name wherever the package is installed)."""

    kind: str
    name: str  # official or bundled name, or the directory path for local kinds
    slug: str  # the model's name in URLs
    processing: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("official", "hf_dir", "native", "bundled"):
            raise ValueError(f"unknown model kind {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**data)


@dataclass
class LoadedModel:
    """A model ready to run, with the facts the indexer and the app need."""

    spec: ModelSpec
    model: Any  # transformer_lens.HookedTransformer
    tokenizer: Any  # a transformers tokenizer
    bos_token_id: int
    eos_token_id: int
    loader: dict[str, Any] = field(default_factory=dict)  # what loaded it, recorded in the index

    @property
    def n_ctx(self) -> int:
        return int(self.model.cfg.n_ctx)


def slugify(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.").lower()
    return slug or "model"


def check_name(name: str, given: bool) -> str:
    """`name` as the model's URL name, refused if it is one of the site's own paths."""
    option = "--name" if given else "the model's name (from its directory; choose another with --name)"
    if not SLUG_PATTERN.fullmatch(name):
        raise ActscopeError(
            f"{option} {name!r}: a model's name is lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    if name in RESERVED_NAMES:
        raise ActscopeError(f"{option} {name!r}: reserved for the site's own pages ({', '.join(RESERVED_NAMES)})")
    return name


def resolve_model_spec(text: str, name: str | None = None) -> ModelSpec:
    """Turn the --model argument (and --name, the model's URL name) into a spec, checking
    what can be checked offline."""
    spec = _resolve(text)
    spec.slug = check_name(name, True) if name is not None else check_name(spec.slug, False)
    return spec


def _resolve(text: str) -> ModelSpec:
    from actscope.indexer import bundled

    if bundled.model_dir(text) is not None:
        return ModelSpec("bundled", text, slugify(text))
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ActscopeError(f"--model {text}: is a file; expected a model directory or a model name")
        if (path / NATIVE_CONFIG).is_file():
            return ModelSpec("native", str(path.resolve()), slugify(path.resolve().name))
        if (path / "config.json").is_file():
            return ModelSpec("hf_dir", str(path.resolve()), slugify(path.resolve().name))
        raise ActscopeError(
            f"--model {text}: directory holds neither {NATIVE_CONFIG} (actscope native) "
            "nor config.json (Hugging Face format)"
        )
    if text.startswith((".", "/", "~")) or "/" in text and not _is_official(text):
        raise ActscopeError(f"--model {text}: no such directory, and not a TransformerLens model name")
    if not _is_official(text):
        raise ActscopeError(
            f"--model {text}: unknown model; give a TransformerLens official name "
            "(e.g. gelu-1l, gpt2-small), a Hugging Face model directory or an actscope native directory"
        )
    return ModelSpec("official", text, slugify(text))


def _is_official(name: str) -> bool:
    import transformer_lens.loading_from_pretrained as loading

    try:
        loading.get_official_model_name(name)
    except ValueError:
        return False
    return True


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ActscopeError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ActscopeError(f"--device {device}: expected auto, cpu or cuda")
    return device


def load_model(spec: ModelSpec, device: str = "cpu") -> LoadedModel:
    """Load the model of `spec` on `device`, in eval mode with gradients off."""
    import torch

    torch.set_grad_enabled(False)
    loader: dict[str, Any] = {"loader": "transformer_lens.HookedTransformer", "transformer_lens": _version()}
    if spec.kind in NATIVE_KINDS:
        model, tokenizer = _load_native(_model_dir(spec, NATIVE_CONFIG), device)
        spec.processing = {"native": True}
        loader["weights"] = "actscope native (HookedTransformer state dict, as saved)"
    elif spec.kind == "hf_dir":
        from actscope.indexer.model.hf_dir import load_hf_dir

        hf = load_hf_dir(_model_dir(spec, "config.json"), device, {**DEFAULT_PROCESSING, **spec.processing})
        model, tokenizer = hf.model, hf.tokenizer
        spec.processing = hf.processing
        loader["architecture"] = hf.architecture
        loader["config"] = "config.json's architecture (TransformerLens' converter; never the path)"
    else:
        processing = {**DEFAULT_PROCESSING, **spec.processing}
        model, tokenizer = _load_official(spec.name, device, processing)
        spec.processing = processing
        loader["architecture"] = model.cfg.original_architecture
        loader["config"] = "HookedTransformer.from_pretrained (official name)"
    model.eval()
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    if bos is None and eos is None:
        raise ActscopeError(f"model {spec.name}: its tokenizer has neither a BOS nor an EOS token")
    bos = eos if bos is None else bos
    eos = bos if eos is None else eos
    return LoadedModel(spec, model, tokenizer, int(bos), int(eos), loader)


def _version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


def _model_dir(spec: ModelSpec, marker: str) -> Path:
    """The directory of a local or bundled model, with a clear error when it has moved
    (an index records where its model was; it may be served from another machine)."""
    from actscope.indexer import bundled

    if spec.kind == "bundled":
        path = bundled.model_dir(spec.name)
        if path is None:
            raise ActscopeError(
                f"model {spec.slug}: the bundled model {spec.name!r} is not installed with this package"
            )
        return path
    path = Path(spec.name)
    if not (path / marker).is_file():
        raise ActscopeError(
            f"model {spec.slug}: its directory {path} (where it was indexed from) is gone or holds no {marker}; "
            "the model is not available here"
        )
    return path


def _load_official(name: str, device: str, processing: dict[str, Any]):
    import contextlib
    import sys

    from transformer_lens import HookedTransformer

    try:
        with contextlib.redirect_stdout(sys.stderr):  # its progress lines; stdout is the CLI's summary
            model = HookedTransformer.from_pretrained(name, device=device, **processing)
    except Exception as exc:  # network, Hub or conversion failures
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ActscopeError(
            f"--model {name}: could not load it from the Hugging Face Hub ({first_line[:200]})"
        ) from exc
    return model, model.tokenizer


def _load_native(path: Path, device: str):
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

    try:
        meta = json.loads((path / NATIVE_CONFIG).read_text())
        config = dict(meta["config"])
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(path / NATIVE_TOKENIZER),
            bos_token=meta.get("bos_token"),
            eos_token=meta.get("eos_token"),
            # TransformerLens re-creates a tokenizer from name_or_path unless it already
            # adds BOS; both keep it from failing (KeyError) or searching the Hub.
            name_or_path=str(path),
            add_bos_token=meta.get("bos_token") is not None,
        )
        state_dict = load_file(str(path / NATIVE_WEIGHTS))
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        raise ActscopeError(f"--model {path}: unreadable actscope model directory ({exc})") from exc
    # to_dict() stores dtype as a string such as "torch.float32".
    dtype = config.get("dtype", "torch.float32")
    config["dtype"] = getattr(torch, str(dtype).replace("torch.", ""))
    config["device"] = device
    config.pop("n_params", None)
    config = {k: v for k, v in config.items() if k in HookedTransformerConfig.__dataclass_fields__}
    cfg = HookedTransformerConfig.from_dict(config)
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    try:
        model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # the tensors' shapes are not the config's
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise ActscopeError(f"--model {path}: {NATIVE_WEIGHTS} does not fit {NATIVE_CONFIG} ({detail[:200]})") from exc
    return model.to(device, print_details=False), tokenizer


def save_native(
    model, tokenizer_json: str | Path, out_dir: str | Path, name: str, bos_token: str, eos_token: str
) -> Path:
    """Write a HookedTransformer and its `tokenizers` JSON in actscope's native format."""
    import shutil

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": "actscope-native",
        "version": 1,
        "name": name,
        "config": json.loads(json.dumps(model.cfg.to_dict(), default=str)),
        "bos_token": bos_token,
        "eos_token": eos_token,
    }
    (out / NATIVE_CONFIG).write_text(json.dumps(meta, indent=1, sort_keys=True))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / NATIVE_WEIGHTS))
    if Path(tokenizer_json).resolve() != (out / NATIVE_TOKENIZER).resolve():
        shutil.copyfile(tokenizer_json, out / NATIVE_TOKENIZER)
    return out
