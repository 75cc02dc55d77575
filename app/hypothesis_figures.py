"""How well a regex hypothesis explains a unit, over a set of tokens: precision, recall,
ROC AUC, and the tokens where the two disagree most.

Pure numpy over per-token arrays (activation, matched); the tokens are those of the
sequences tested, BOS and unmeasured (NaN) positions left out by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Figures:
    n_tokens: int
    n_matched: int
    n_active: int  # activation > threshold
    n_both: int  # active and matched
    precision: float | None  # n_both / n_active; None when no token is active
    recall: float | None  # n_both / n_matched; None when no token is matched
    auroc: float | None  # P(act of a matched token > act of an unmatched one), ties count 1/2

    def as_dict(self) -> dict[str, object]:
        return {
            "n_tokens": self.n_tokens,
            "n_matched": self.n_matched,
            "n_active": self.n_active,
            "n_active_matched": self.n_both,
            "precision": self.precision,
            "recall": self.recall,
            "auroc": self.auroc,
        }


def figures(acts: np.ndarray, matched: np.ndarray, threshold: float) -> Figures:
    """The figures of activations `acts` (float [n]) against `matched` (bool [n])."""
    active = acts > threshold
    n_active, n_matched = int(active.sum()), int(matched.sum())
    n_both = int((active & matched).sum())
    return Figures(
        n_tokens=int(acts.size),
        n_matched=n_matched,
        n_active=n_active,
        n_both=n_both,
        precision=n_both / n_active if n_active else None,
        recall=n_both / n_matched if n_matched else None,
        auroc=auroc(acts, matched),
    )


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC of `scores` for the positive `labels` (Mann-Whitney U over average ranks,
    so a tie between a positive and a negative counts one half); None when either class
    is empty."""
    n_pos = int(labels.sum())
    n_neg = int(labels.size) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Ranks from 1; tied values share the mean of the ranks they span.
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(mean_rank[inverse.reshape(-1)][labels].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


@dataclass(frozen=True)
class TokenAt:
    """One token of the tested set: its sequence, position and activation."""

    seq: int
    pos: int
    act: float


def disagreements(
    seqs: np.ndarray, positions: np.ndarray, acts: np.ndarray, matched: np.ndarray, threshold: float, k: int
) -> tuple[list[TokenAt], list[TokenAt]]:
    """(false positives, false negatives): the active tokens that no match explains,
    highest activation first, and the matched tokens that are not active, lowest first;
    at most `k` of each and one per sequence (the first in that order), so the examples
    show different contexts."""
    active = acts > threshold
    fp = np.flatnonzero(active & ~matched)
    fp = fp[np.argsort(-acts[fp], kind="stable")]
    fn = np.flatnonzero(matched & ~active)
    fn = fn[np.argsort(acts[fn], kind="stable")]
    return _one_per_sequence(fp, seqs, positions, acts, k), _one_per_sequence(fn, seqs, positions, acts, k)


def _one_per_sequence(
    order: np.ndarray, seqs: np.ndarray, positions: np.ndarray, acts: np.ndarray, k: int
) -> list[TokenAt]:
    out: list[TokenAt] = []
    seen: set[int] = set()
    for i in order.tolist():
        seq = int(seqs[i])
        if seq in seen:
            continue
        seen.add(seq)
        out.append(TokenAt(seq, int(positions[i]), float(acts[i])))
        if len(out) == k:
            break
    return out
