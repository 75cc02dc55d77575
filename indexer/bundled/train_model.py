"""`actscope train-default`: re-train the bundled toy model, its tokenizer and its SAE.

Everything comes from the built-in corpora (`mix:train` for training, `mix:heldout`
for evaluation) and one seed, so the shipped files under indexer/bundled/default/ can be
reproduced on a CPU. Steps:
  1. a byte-level BPE tokenizer (8,192 tokens, `<|endoftext|>` is both BOS and EOS);
  2. a 2-layer GELU HookedTransformer (d_model 256, d_mlp 1024, LayerNorm, n_ctx 256),
     trained with AdamW on packed rows `BOS + 255 tokens` (the indexer's packing);
  3. a TopK SAE on one residual-stream hook, trained with SAELens (train_sae.py), its
     dictionary started on the data so that few latents die (docs/training.md).
A report (losses, greedy samples, SAE figures, timings, file sizes) goes to
`training_report.json` beside the weights.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from actscope.indexer.errors import ActscopeError

MODEL_NAME = "toy-2l"
EOT = "<|endoftext|>"
REPORT = "training_report.json"
SAMPLE_PROMPTS = (
    "def __init__(self",
    "import os\nimport sys\n\n\ndef ",
    "    for i in range(",
    "\n\nHam.\nTo be, or not to be,",
    "\n\nKing.\nMy lord,",
    "[Enter ",
)


@dataclass
class TrainSettings:
    """Sizes and budgets of one training run; `quick()` is a tiny run for tests."""

    vocab_size: int = 8192
    n_layers: int = 2
    d_model: int = 256
    n_heads: int = 4
    d_mlp: int = 1024
    n_ctx: int = 256
    batch_rows: int = 16  # rows of n_ctx tokens per optimizer step
    train_tokens: int = 2_400_000
    lr: float = 2e-3
    warmup_steps: int = 60
    weight_decay: float = 0.1
    eval_rows: int = 256  # held-out rows of n_ctx tokens for the loss report
    sample_tokens: int = 48
    sae: SaeSettings = field(default_factory=lambda: SaeSettings())

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be a multiple of n_heads")
        if self.batch_rows < 1 or self.train_tokens < self.batch_rows * self.n_ctx:
            raise ValueError("train_tokens must cover at least one batch")

    @property
    def steps(self) -> int:
        return self.train_tokens // (self.batch_rows * self.n_ctx)

    @classmethod
    def quick(cls) -> TrainSettings:
        return cls(
            vocab_size=600,
            d_model=32,
            n_heads=2,
            d_mlp=64,
            n_ctx=64,
            batch_rows=4,
            train_tokens=4 * 64 * 6,
            warmup_steps=2,
            eval_rows=4,
            sample_tokens=4,
            sae=SaeSettings(
                d_sae=64, k=4, training_tokens=8192, context_size=32, batch_tokens=512, dead_feature_window=4
            ),
        )


@dataclass
class SaeSettings:
    name: str = "res1-topk"
    hook_name: str = "blocks.1.hook_resid_pre"
    d_sae: int = 1024
    k: int = 32
    training_tokens: int = 4_000_000
    context_size: int = 128  # the indexer's default --ctx
    batch_tokens: int = 4096
    lr: float = 4e-4
    # Steps a latent may stay silent before AuxK trains it (SAELens' 1,000 spans the run).
    dead_feature_window: int = 50
    init_from_data: bool = True  # random directions mostly die here (train_sae.init_from_data)
    aux_loss_coefficient: float = 1.0


def default_out_dir() -> Path:
    """indexer/bundled/default/ of the source tree, if we run from a writable checkout."""
    package = Path(__file__).resolve().parent
    repo = package.parent.parent
    if (repo / "pyproject.toml").is_file() and os.access(package, os.W_OK):
        return package / "default"
    raise ActscopeError(
        "train-default: the package is installed, not run from a source checkout; "
        "give --out DIR to choose where the model and SAE go"
    )


def train_default(
    out_dir: str | Path | None = None,
    seed: int = 0,
    settings: TrainSettings | None = None,
    log=print,
    sae_only: bool = False,
) -> dict:
    """Train tokenizer, model and SAE into `out_dir`; return the report (also written).

    sae_only: keep the tokenizer and model already in `out_dir` (as trained with the same
    seed) and re-train only the SAE; the random streams are replayed so the result equals
    a full run's.
    """
    import torch

    from actscope.indexer.bundled import train_sae
    from actscope.indexer.corpus import builtin as builtin_corpora

    settings = settings or TrainSettings()
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    started = time.time()
    report: dict = {
        "seed": seed,
        "settings": asdict(settings),
        "timings_s": {},
        # The stdlib corpus and float results depend on these.
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }

    train_docs = builtin_corpora.documents("mix:train")
    random.Random(seed).shuffle(train_docs)  # mixes code and plays within every batch
    train_texts = [d.load() for d in train_docs]

    t0 = time.time()
    tokenizer_path = out / "model" / "tokenizer.json"
    tokenizer_path.parent.mkdir(parents=True, exist_ok=True)
    if sae_only:
        from tokenizers import Tokenizer

        previous = json.loads((out / REPORT).read_text()) if (out / REPORT).is_file() else {}
        report.update({k: v for k, v in previous.items() if k in ("model", "timings_s", "note")})
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    else:
        tokenizer = train_tokenizer(train_texts, settings.vocab_size, tokenizer_path)
        report["timings_s"]["tokenizer"] = round(time.time() - t0, 1)
    report["tokenizer"] = {"vocab_size": tokenizer.get_vocab_size(), "eot_id": tokenizer.token_to_id(EOT)}
    log(f"tokenizer: {tokenizer.get_vocab_size()} tokens")

    eot = tokenizer.token_to_id(EOT)
    if eot is None:
        raise ActscopeError(f"train-default: the tokenizer has no {EOT} token")
    train_ids = encode_all(tokenizer, train_texts)
    train_rows = pack_rows(train_ids, eot, settings.n_ctx)
    generator = torch.Generator().manual_seed(seed)
    train_rows = train_rows[torch.randperm(len(train_rows), generator=generator)]
    report["corpus"] = {
        "train_documents": len(train_texts),
        "train_rows_available": len(train_rows),
        "train_tokens_available": int(train_rows.numel()),
    }

    if not sae_only:
        train_language_model(out, train_rows, settings, seed, report, log)
    model_dir = out / "model"

    t0 = time.time()
    sae_rows = pack_rows(train_ids, eot, settings.sae.context_size)
    sae_rows = sae_rows[torch.randperm(len(sae_rows), generator=generator)]
    train_sae.train_sae(model_dir, sae_rows, settings.sae, out / "saes", seed, log)
    sae_s = time.time() - t0
    timings = report["timings_s"]
    if sae_only and "total" in timings and "sae" in timings:
        # The kept model's run, with its SAE step replaced by this one.
        timings["total"] = round(timings["total"] - timings["sae"] + sae_s, 1)
    else:
        timings["total"] = round(time.time() - started, 1)
    timings["sae"] = round(sae_s, 1)
    return write_report(out, report, settings, log)


def train_language_model(out: Path, train_rows, settings: TrainSettings, seed: int, report: dict, log) -> None:
    from actscope.indexer.model.loading import save_native

    t0 = time.time()
    model = build_model(settings, seed)
    losses = train_model(model, train_rows, settings, log)
    report["timings_s"]["model"] = round(time.time() - t0, 1)
    report["model"] = {
        "n_params": sum(p.numel() for p in model.parameters()),
        "train_tokens": settings.steps * settings.batch_rows * settings.n_ctx,
        "train_loss_first": round(losses[0], 4),
        "train_loss_last50_avg": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "tokens_per_s": round(settings.steps * settings.batch_rows * settings.n_ctx / max(1e-9, time.time() - t0)),
    }
    model_dir = save_native(model, out / "model" / "tokenizer.json", out / "model", MODEL_NAME, EOT, EOT)
    log(f"model: saved {model_dir}")


def write_report(out: Path, report: dict, settings: TrainSettings, log=print) -> dict:
    """Evaluate the files in `out` on held-out text, add the figures to `report`, save it."""
    report["evaluation"] = evaluate_bundle(out, settings)
    for name, value in report["evaluation"].items():
        log(f"{name}: {value}")
    report["files_bytes"] = {
        p.relative_to(out).as_posix(): p.stat().st_size
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != REPORT
    }
    (out / REPORT).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    log(f"wrote {out} ({sum(report['files_bytes'].values()) / 1e6:.1f} MB)")
    return report


def evaluate_bundle(out: Path, settings: TrainSettings) -> dict:
    """Held-out loss per token, greedy samples and SAE figures of a trained bundle."""
    from tokenizers import Tokenizer

    from actscope.indexer.bundled import train_sae
    from actscope.indexer.model.loading import ModelSpec, load_model

    loaded = load_model(ModelSpec("native", str(out / "model"), MODEL_NAME), device="cpu")
    tokenizer = Tokenizer.from_file(str(out / "model" / "tokenizer.json"))
    saes = sorted(p for p in (out / "saes").iterdir() if (p / "cfg.json").is_file())
    return {
        "heldout_loss_per_token": heldout_losses(loaded.model, tokenizer, settings),
        "samples": greedy_samples(loaded.model, tokenizer, settings.sample_tokens),
        "saes": {
            p.name: train_sae.evaluate_sae(p, loaded, heldout_rows(tokenizer, settings.sae.context_size)) for p in saes
        },
    }


def heldout_rows(tokenizer, n_ctx: int, corpus: str = "mix:heldout"):
    """Packed rows of held-out text, as the indexer would read them."""
    from actscope.indexer.corpus import builtin as builtin_corpora

    texts = [d.load() for d in builtin_corpora.documents(corpus)]
    return pack_rows(encode_all(tokenizer, texts), tokenizer.token_to_id(EOT), n_ctx)


def train_tokenizer(texts: list[str], vocab_size: int, path: Path):
    """A byte-level BPE (GPT-2 pre-tokenisation) with `<|endoftext|>` as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tokenizer.save(str(path))
    return tokenizer


def encode_all(tokenizer, texts: list[str]) -> list[list[int]]:
    return [enc.ids for enc in tokenizer.encode_batch(texts, add_special_tokens=False)]


def pack_rows(docs: list[list[int]], eot: int, n_ctx: int):
    """Rows of BOS + n_ctx-1 tokens of the EOS-separated stream (same as the indexer)."""
    import torch

    stream = [tok for ids in docs if ids for tok in (*ids, eot)]
    body = n_ctx - 1
    n_rows = len(stream) // body
    if n_rows == 0:
        raise ActscopeError("train-default: the corpus is shorter than one row")
    data = torch.tensor(stream[: n_rows * body], dtype=torch.long).view(n_rows, body)
    bos = torch.full((n_rows, 1), eot, dtype=torch.long)
    return torch.cat([bos, data], dim=1)  # [rows, n_ctx]


def build_model(settings: TrainSettings, seed: int):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=settings.n_layers,
        d_model=settings.d_model,
        n_heads=settings.n_heads,
        d_head=settings.d_model // settings.n_heads,
        d_mlp=settings.d_mlp,
        n_ctx=settings.n_ctx,
        d_vocab=settings.vocab_size,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="standard",
        seed=seed,
        device="cpu",
        model_name=MODEL_NAME,
        original_architecture="actscope-toy",
    )
    return HookedTransformer(cfg)


def train_model(model, rows, settings: TrainSettings, log) -> list[float]:
    """AdamW with linear warm-up and cosine decay to 10%; returns the loss of every step."""
    import torch

    torch.set_grad_enabled(True)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "W_pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "W_pos" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.95),
    )
    steps = settings.steps
    if steps * settings.batch_rows > len(rows):
        raise ActscopeError(f"train-default: only {len(rows)} rows, {steps * settings.batch_rows} needed")

    def lr_at(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = (step - settings.warmup_steps) / max(1, steps - settings.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    losses: list[float] = []
    started = time.time()
    for step in range(steps):
        batch = rows[step * settings.batch_rows : (step + 1) * settings.batch_rows]
        loss = model(batch, return_type="loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            done = (step + 1) * settings.batch_rows * settings.n_ctx
            log(
                f"step {step + 1}/{steps} loss {sum(losses[-50:]) / len(losses[-50:]):.3f} "
                f"({done / (time.time() - started):.0f} tokens/s)"
            )
    model.eval()
    torch.set_grad_enabled(False)
    return losses


def heldout_losses(model, tokenizer, settings: TrainSettings) -> dict[str, float]:
    """Mean next-token loss on held-out rows, per corpus and for the mix."""
    import torch

    result = {}
    for name in ("mix:heldout", "stdlib:heldout", "shakespeare:heldout"):
        rows = heldout_rows(tokenizer, settings.n_ctx, name)[: settings.eval_rows]
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(rows), 16):
                per_token = model(rows[start : start + 16], return_type="loss", loss_per_token=True)
                total += float(per_token.sum())  # per_token: [b, pos-1]
                count += per_token.numel()
        result[name.split(":")[0]] = round(total / count, 4)
    return result


def greedy_samples(model, tokenizer, n_tokens: int) -> list[dict[str, str]]:
    import torch

    eot = tokenizer.token_to_id(EOT)
    samples = []
    with torch.no_grad():
        for prompt in SAMPLE_PROMPTS:
            ids = [eot] + tokenizer.encode(prompt, add_special_tokens=False).ids
            prompt_len = len(ids)
            for _ in range(n_tokens):
                logits = model(torch.tensor([ids[-model.cfg.n_ctx :]]))  # [1, pos, vocab]
                ids.append(int(logits[0, -1].argmax()))
            samples.append({"prompt": prompt, "completion": tokenizer.decode(ids[prompt_len:])})
    return samples
