"""The configuration of one indexing run: plain data, validated, recorded in the index."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from actscope.indexer.errors import ActscopeError

MAX_RESERVOIR = 1 << 16


@dataclass
class IndexConfig:
    model: str
    dataset: str
    out: str
    name: str | None = None  # the model's name in URLs; default: its directory's or official name
    text_column: str = "text"
    split: str = "train"
    saes: list[str] = field(default_factory=list)
    neuron_hooks: list[str] = field(default_factory=list)  # empty: every layer's mlp.hook_post
    no_neurons: bool = False
    directions: list[str] = field(default_factory=list)  # N@HOOK: N random directions in HOOK's space
    heads: list[str] = field(default_factory=list)  # head metrics: a source per layer and metric
    dla: bool = False  # a direct-effect twin of every neuron and SAE source
    max_tokens: int | None = None
    ctx: int = 128
    batch_size: int = 32
    device: str = "auto"
    top_k: int = 20
    band_size: int = 8
    window: tuple[int, int] = (24, 8)
    seed: int = 0
    reservoir: int = 4096  # fingerprint positions (indexer/accumulate/reservoir.py); 0: no fingerprints
    resume: bool = False
    checkpoint_every: int = 200
    quiet: bool = False
    # Fine histogram bins per unit; bands snap to these bins so band counts are exact.
    hist_bins: int = 512
    # Tokens used to estimate each unit's range and quantile band edges.
    calibration_tokens: int = 8192
    # Accumulator state one pass may hold, in GB: more units than fit are indexed in groups,
    # one pass over the corpus each (indexer/groups.py). None: every unit in one pass.
    max_state_gb: float | None = None

    def __post_init__(self) -> None:
        self.saes = list(self.saes)
        self.neuron_hooks = list(self.neuron_hooks)
        self.directions = list(self.directions)
        self.heads = list(self.heads)
        self.window = tuple(int(v) for v in self.window)  # type: ignore[assignment]
        for name in ("ctx", "batch_size", "top_k", "band_size", "hist_bins", "calibration_tokens"):
            if getattr(self, name) < 1:
                raise ActscopeError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.reservoir <= MAX_RESERVOIR:
            raise ActscopeError(
                f"--reservoir must be between 0 and {MAX_RESERVOIR} (slots are stored as 16-bit numbers)"
            )
        if self.ctx < 2:
            raise ActscopeError("--ctx must be at least 2 (BOS plus one token)")
        if self.max_tokens is not None and self.max_tokens < self.ctx:
            raise ActscopeError(f"--max-tokens {self.max_tokens} is smaller than one sequence (--ctx {self.ctx})")
        if self.max_state_gb is not None and not self.max_state_gb > 0:
            raise ActscopeError(f"--max-state-gb {self.max_state_gb}: must be more than 0")
        if self.no_neurons and self.neuron_hooks:
            raise ActscopeError("--no-neurons contradicts --neurons")
        if self.no_neurons and not self.saes and not self.directions and not self.heads:
            raise ActscopeError("--no-neurons without --sae, --heads or --directions leaves nothing to index")
        if self.heads:
            from actscope.indexer.kinds.head import check_metrics

            check_metrics(self.heads)
        self._check_out()

    def _check_out(self) -> None:
        out = Path(self.out)
        if out.suffix != ".duckdb":
            raise ActscopeError(f"--out {self.out}: the index file name must end in .duckdb")
        parent = out.resolve().parent
        if not parent.is_dir():
            raise ActscopeError(f"--out {self.out}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise ActscopeError(f"--out {self.out}: directory {parent} is not writable")
        if out.is_dir():
            raise ActscopeError(f"--out {self.out}: is a directory")

    @property
    def tmp_path(self) -> Path:
        return Path(str(self.out) + ".tmp")

    @property
    def checkpoint_path(self) -> Path:
        return Path(str(self.out) + ".ckpt")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The options that determine the index content (a resumed run must match them)."""
        ignored = {"resume", "quiet", "checkpoint_every", "device", "out", "max_state_gb"}
        return {k: v for k, v in self.to_dict().items() if k not in ignored}

    @classmethod
    def from_cli(cls, options: dict[str, Any]) -> IndexConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names})
