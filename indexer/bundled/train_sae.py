"""Train the bundled TopK SAE with SAELens' own trainer, offline, and measure it.

The activations come from the freshly trained toy model over pre-packed training rows
(an in-memory `datasets.Dataset`), so nothing touches the Hugging Face Hub. The saved
folder is plain SAELens format: `cfg.json` + `sae_weights.safetensors`, with the hook
name in `cfg.json`'s metadata, loadable with `SAE.load_from_disk`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from actscope.indexer.errors import ActscopeError

if TYPE_CHECKING:
    from actscope.indexer.bundled.train_model import SaeSettings

KEEP_FILES = ("cfg.json", "sae_weights.safetensors")
INIT_ROWS = 256  # rows of training text whose activations start the dictionary


def train_sae(model_dir: Path, rows, settings: SaeSettings, saes_dir: Path, seed: int, log) -> Path:
    """Train on `rows` ([n, context_size] token ids) and save to saes_dir/<name>."""
    import torch
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    from actscope.indexer.model.loading import ModelSpec, load_model

    loaded = load_model(ModelSpec("native", str(model_dir), "toy-2l"), device="cpu")
    model = loaded.model
    # Rows needed for training, plus SAELens' buffer refills and evaluation batches.
    n_rows = min(len(rows), settings.training_tokens // settings.context_size + 2048)
    dataset = Dataset.from_dict({"input_ids": rows[:n_rows].tolist()})
    d_in = model.cfg.d_model
    store_batch = max(1, min(32, settings.batch_tokens // settings.context_size))
    # SAELens' mixing buffer holds n_batches_in_buffer * context_size tokens: 4 batches' worth.
    in_buffer = max(4, -(-4 * settings.batch_tokens // settings.context_size))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = LanguageModelSAERunnerConfig(
            sae=TopKTrainingSAEConfig(
                d_in=d_in, d_sae=settings.d_sae, k=settings.k, aux_loss_coefficient=settings.aux_loss_coefficient
            ),
            model_name="toy-2l",
            hook_name=settings.hook_name,
            dataset_path="",
            is_dataset_tokenized=True,
            streaming=False,
            context_size=settings.context_size,
            prepend_bos=True,
            # BOS/EOS positions are outliers in the residual stream; the indexer still
            # encodes them, but they should not shape the dictionary.
            exclude_special_tokens=True,
            training_tokens=settings.training_tokens,
            train_batch_size_tokens=settings.batch_tokens,
            store_batch_size_prompts=store_batch,
            n_batches_in_buffer=in_buffer,
            lr=settings.lr,
            lr_warm_up_steps=50,
            lr_decay_steps=max(1, settings.training_tokens // settings.batch_tokens // 5),
            dead_feature_window=settings.dead_feature_window,
            n_eval_batches=2,
            device="cpu",
            seed=seed,
            logger=LoggingConfig(log_to_wandb=False),
            output_path=str(Path(tmp) / "out"),
            checkpoint_path=str(Path(tmp) / "checkpoints"),
            verbose=False,
        )
        torch.manual_seed(seed)
        torch.set_grad_enabled(True)
        runner = LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
        if settings.init_from_data:
            init_from_data(runner.sae, model, rows[-INIT_ROWS:], settings.hook_name, loaded.eos_token_id, seed)
        runner.run()
        torch.set_grad_enabled(False)
        target = saes_dir / settings.name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name in KEEP_FILES:
            shutil.copyfile(Path(tmp) / "out" / name, target / name)
    log(f"sae: saved {target}")
    return target


def init_from_data(sae, model, rows, hook: str, special: int, seed: int) -> None:
    """Start the decoder bias at the activations' mean and each latent's decoder row (and
    encoder column) at one centred training activation, at the usual initial norm.

    The residual stream is far from isotropic (5 of 256 directions hold half its
    variance): random directions start in the quiet ones, never win the top k, and die.
    """
    import torch

    with torch.no_grad():
        acts = []
        for start in range(0, len(rows), 32):
            batch = rows[start : start + 32]
            _, cache = model.run_with_cache(batch, names_filter=hook, return_type=None)
            acts.append(cache[hook][batch != special])
        x = torch.cat(acts)
        if len(x) < sae.cfg.d_sae:
            raise ActscopeError(f"train-default: {len(x)} tokens to start {sae.cfg.d_sae} latents from; more needed")
        mean = x.double().mean(dim=0).float()
        generator = torch.Generator().manual_seed(seed)
        picked = x[torch.randperm(len(x), generator=generator)[: sae.cfg.d_sae]] - mean
        norm = sae.W_dec.norm(dim=-1, keepdim=True)  # the initial norm SAELens chose
        sae.W_dec.copy_(picked / picked.norm(dim=-1, keepdim=True) * norm)
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(mean)


def evaluate_sae(sae_dir: Path, loaded, rows, max_rows: int = 256) -> dict:
    """L0, explained variance, dead share and CE-loss recovery on held-out `rows`.

    BOS/EOS positions are left out, as in training. Dead: never fires on these rows.
    """
    import torch
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dir), device="cpu")
    model = loaded.model
    hook = sae.cfg.metadata.hook_name
    rows = rows[:max_rows]
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    l0_sum = sq_err = n_tok = 0.0
    sum_x = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    sum_x2 = 0.0
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    with torch.no_grad():
        for start in range(0, len(rows), 16):
            batch = rows[start : start + 16]
            _, cache = model.run_with_cache(batch, names_filter=hook, return_type=None)
            acts = cache[hook]  # [b, pos, d_in]
            keep = batch != loaded.eos_token_id  # special tokens out, as in training
            x = acts[keep]  # [n, d_in]
            latents = sae.encode(x)  # [n, d_sae]
            recon = sae.decode(latents)
            fired |= (latents > 0).any(dim=0)
            l0_sum += float((latents > 0).sum())
            sq_err += float(((x - recon) ** 2).sum())
            sum_x += x.double().sum(dim=0)
            sum_x2 += float((x.double() ** 2).sum())
            n_tok += x.shape[0]
            ce["clean"] += float(model(batch, return_type="loss")) * len(batch)

            def splice(value, hook=None, replace="sae"):
                if replace == "zero":
                    return torch.zeros_like(value)
                out = value.clone()
                out[keep] = sae.decode(sae.encode(value[keep]))
                return out

            ce["sae"] += float(model.run_with_hooks(batch, return_type="loss", fwd_hooks=[(hook, splice)])) * len(batch)
            ce["zero"] += float(
                model.run_with_hooks(
                    batch, return_type="loss", fwd_hooks=[(hook, lambda v, hook=None: splice(v, replace="zero"))]
                )
            ) * len(batch)
    total_var = sum_x2 - float((sum_x**2).sum()) / n_tok
    ce = {k: v / len(rows) for k, v in ce.items()}
    recovered = (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]) if ce["zero"] != ce["clean"] else 0.0
    return {
        "hook_name": hook,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "k": sae.cfg.k,
        "eval_tokens": int(n_tok),
        "l0": round(l0_sum / n_tok, 2),
        "explained_variance": round(1 - sq_err / total_var, 4),
        "dead_share": round(1 - float(fired.float().mean()), 4),
        "ce_loss_clean": round(ce["clean"], 4),
        "ce_loss_with_sae": round(ce["sae"], 4),
        "ce_loss_zero_ablation": round(ce["zero"], 4),
        "ce_loss_recovered": round(recovered, 4),
    }
