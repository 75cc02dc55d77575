"""Local Hugging Face model directories as HookedTransformers, the architecture read from
the directory's config.json and never from its path.

TransformerLens' converter picks some architectures from substrings of a model's *name*
("llama", "gemma", ...) and is handed a local directory's path as that name; a GPT-NeoX
model under `llama-runs/` then loads as a Llama. So TransformerLens' converter here reads
a copy of config.json in a directory whose path holds none of those substrings, and the
Gemma configs (which TransformerLens only knows by their official names) are built here
from config.json. Everything after the config is TransformerLens' own weight conversion
and processing, so the model has HookedTransformer's hooks and weights.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actscope.indexer.errors import ActscopeError

LOADER = "transformer_lens.HookedTransformer"
# Substrings TransformerLens' converter looks for in a model name to pick an architecture.
NAME_RULES = ("llama", "gemma", "wav2vec2")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# Where a config says how long a sequence the model was trained on, by architecture family.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "seq_length", "n_ctx")


@dataclass
class HfDirModel:
    model: Any  # transformer_lens.HookedTransformer
    tokenizer: Any
    architecture: str  # config.json's architectures[0]
    processing: dict[str, Any]  # as applied (TransformerLens turns fold_ln off for some)


def load_hf_dir(path: Path, device: str, processing: dict[str, Any]) -> HfDirModel:
    """The model of Hugging Face directory `path` as a HookedTransformer, its weights
    processed with `processing` (TransformerLens' load_and_process_state_dict keywords)."""
    import torch
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoModelForCausalLM

    raw = _read_config(path)
    tokenizer = load_tokenizer(path)
    architecture = (raw.get("architectures") or [None])[0]
    if not architecture:
        raise ActscopeError(f"--model {path}: config.json names no architecture (its 'architectures' list is empty)")
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        cfg_dict, processing = config_dict(path, raw, hf_model.config, processing)
        cfg_dict["device"] = device
        cfg = HookedTransformerConfig.from_dict(cfg_dict)
        # Given the model, the weight conversion goes by cfg.original_architecture alone.
        state_dict = loading.get_pretrained_state_dict(str(path), cfg, hf_model=hf_model)
    except ActscopeError:
        raise
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ActscopeError(f"--model {path}: cannot read it as a Hugging Face model ({first_line[:200]})") from exc
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.load_and_process_state_dict(state_dict, **processing)
    return HfDirModel(model.to(device, print_details=False), tokenizer, architecture, processing)


def load_tokenizer(path: Path):
    """The directory's tokenizer; a clear error when it has none (transformers 5 then
    returns an empty tokenizer, and every document would encode to nothing)."""
    from transformers import AutoTokenizer

    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ActscopeError(
            f"--model {path}: the model directory has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "save one there with tokenizer.save_pretrained(DIR)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ActscopeError(
            f"--model {path}: cannot read the model directory's tokenizer ({first_line[:200]})"
        ) from exc
    if len(tokenizer) == 0:
        raise ActscopeError(f"--model {path}: the model directory's tokenizer is empty (no vocabulary)")
    return tokenizer


def config_dict(
    path: Path, raw: dict[str, Any], hf_config, processing: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The HookedTransformerConfig fields for a directory's model, and the processing as
    TransformerLens can apply it; what TransformerLens' get_pretrained_model_config does
    after its conversion, for a local model."""
    import torch
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    architecture = raw["architectures"][0]
    if architecture in ("GemmaForCausalLM", "Gemma2ForCausalLM"):
        cfg = _gemma_config(hf_config, architecture)
    else:
        with _neutral_copy(path, raw) as neutral:
            cfg = loading.convert_hf_model_config(str(neutral))
    context = next((int(raw[key]) for key in CONTEXT_KEYS if isinstance(raw.get(key), int)), None)
    if context is not None:
        cfg["n_ctx"] = min(int(cfg["n_ctx"]), context)  # TransformerLens caps some (Mistral: 2048)
    cfg["model_name"] = path.name
    cfg["tokenizer_name"] = None  # the tokenizer is passed in, never looked up by name
    cfg["init_weights"] = False
    cfg["d_vocab"] = int(hf_config.vocab_size)
    cfg["dtype"] = torch.float32
    cfg["n_devices"] = 1
    cfg["from_checkpoint"] = False
    cfg.setdefault("default_prepend_bos", True)
    processing = dict(processing)
    if processing.get("fold_ln") and (
        cfg.get("positional_embedding_type") == "shortformer" or architecture in POST_NORM_ARCHITECTURES
    ):
        processing["fold_ln"] = False  # not valid there; TransformerLens refuses it the same way
    if processing.get("fold_ln"):
        norm = str(cfg.get("normalization_type"))
        cfg["normalization_type"] = {"LN": "LNPre", "RMS": "RMSPre"}.get(norm, cfg.get("normalization_type"))
    return cfg, processing


def _gemma_config(hf_config, architecture: str) -> dict[str, Any]:
    """Gemma and Gemma 2 from their config.json, as TransformerLens' official Gemma configs
    are written (it has them by name only)."""
    import transformer_lens.loading_from_pretrained as loading

    head_dim = int(getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads)
    # What transformers' own MLPs read: Gemma hidden_act, Gemma 2 hidden_activation.
    act_fn = hf_config.hidden_activation if architecture == "Gemma2ForCausalLM" else hf_config.hidden_act
    cfg: dict[str, Any] = {
        "d_model": hf_config.hidden_size,
        "d_head": head_dim,
        "n_heads": hf_config.num_attention_heads,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        "n_ctx": hf_config.max_position_embeddings,
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": act_fn,
        "initializer_range": hf_config.initializer_range,
        "normalization_type": "RMS",
        "rotary_base": loading._get_rope_theta(hf_config),
        "rotary_dim": head_dim,
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        "n_key_value_heads": hf_config.num_key_value_heads,
        "gated_mlp": True,
        "final_rms": True,
        "original_architecture": architecture,
    }
    if architecture == "Gemma2ForCausalLM":
        layer_types = getattr(hf_config, "layer_types", None) or [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(hf_config.num_hidden_layers)
        ]
        cfg.update(
            {
                "attn_scale": float(hf_config.query_pre_attn_scalar) ** 0.5,
                "window_size": hf_config.sliding_window,
                "use_local_attn": True,
                "attn_types": ["local" if kind == "sliding_attention" else "global" for kind in layer_types],
                "use_normalization_before_and_after": True,
            }
        )
        if hf_config.attn_logit_softcapping is not None:
            cfg["attn_scores_soft_cap"] = float(hf_config.attn_logit_softcapping)
        if hf_config.final_logit_softcapping is not None:
            cfg["output_logits_soft_cap"] = float(hf_config.final_logit_softcapping)
    return cfg


def _read_config(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ActscopeError(f"--model {path}: unreadable config.json ({exc})") from exc
    if not isinstance(raw, dict):
        raise ActscopeError(f"--model {path}: config.json is not a JSON object")
    if "n_ctx" not in raw and isinstance(raw.get("n_positions"), int):
        raw["n_ctx"] = raw["n_positions"]  # GPT-2's context; transformers 5 no longer writes n_ctx
    return raw


@contextmanager
def _neutral_copy(path: Path, raw: dict[str, Any]) -> Iterator[Path]:
    """A temporary directory holding `raw` as config.json, at a path none of
    TransformerLens' name rules match."""
    for _ in range(8):  # the random part of the name could spell one, by chance
        where = Path(tempfile.mkdtemp(prefix="actscope-"))
        if not any(rule in str(where).lower() for rule in NAME_RULES):
            break
        shutil.rmtree(where, ignore_errors=True)
    else:
        raise ActscopeError(
            f"--model {path}: the temporary directory {where} has a name TransformerLens "
            "reads as an architecture; set TMPDIR to another directory"
        )
    try:
        (where / "config.json").write_text(json.dumps(raw))
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)
