"""Keep the best n entries of each of G groups, merging candidates batch after batch.

Used twice: per-unit top-k examples (group = unit, score = activation, highest first)
and per-(unit, band) priority samples (group = unit*n_bands + band, score = random key,
lowest first). Entries carry a payload (token id, activation, window...). Merging two
states is the same operation as merging candidates, which makes runs resumable and
shardable. Ties are broken by the smaller token id so results never depend on batching.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class GroupedTopK:
    def __init__(
        self,
        n_groups: int,
        n: int,
        descending: bool,
        payload_shapes: dict[str, tuple],
        payload_dtypes: dict[str, torch.dtype],
        device,
    ) -> None:
        self.n_groups = n_groups
        self.n = n
        self.descending = descending
        empty = float("-inf") if descending else float("inf")
        # score [G, n], sorted best first; unused slots hold the worst possible score.
        self.score = torch.full((n_groups, n), empty, dtype=torch.float64, device=device)
        self.token = torch.full((n_groups, n), -1, dtype=torch.int64, device=device)
        self.payload = {
            name: torch.full(
                (n_groups, n, *shape),
                float("nan") if payload_dtypes[name].is_floating_point else -1,
                dtype=payload_dtypes[name],
                device=device,
            )
            for name, shape in payload_shapes.items()
        }

    def threshold(self) -> torch.Tensor:
        """[G] score a candidate must beat to enter its group (the n-th best so far)."""
        return self.score[:, -1]

    def filled(self) -> torch.Tensor:
        """[G] bool: the group holds n real entries."""
        return self.token[:, -1] >= 0

    def add(
        self,
        group: torch.Tensor,
        score: torch.Tensor,
        token: torch.Tensor,
        payload_of: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    ) -> None:
        """Merge candidates (1-D group/score/token) into the state.

        `payload_of(indices)` returns the payload rows of the candidates at `indices`; it is
        only called for candidates that make it into the state, so a flood of candidates
        (the first batches) never materialises their example windows.
        """
        if group.numel() == 0:
            return
        n, device = self.n, group.device
        # Only the groups that received candidates are rewritten: after warm-up they are
        # few, and the payload (example windows) is the bulk of the state.
        marked = torch.zeros(self.n_groups, dtype=torch.bool, device=device)
        marked[group] = True
        touched = marked.nonzero().squeeze(1)
        n_touched = touched.numel()
        lookup = torch.empty(self.n_groups, dtype=torch.long, device=device)
        lookup[touched] = torch.arange(n_touched, device=device)
        n_old = n_touched * n
        all_group = torch.cat([torch.arange(n_touched, device=device).repeat_interleave(n), lookup[group]])
        all_score = torch.cat([self.score[touched].reshape(-1), score.to(torch.float64)])
        all_token = torch.cat([self.token[touched].reshape(-1), token])
        # One sort on (group, score best-first). Equal scores keep their concatenation
        # order: state first, then candidates in stream order, i.e. smaller token first.
        order = torch.argsort((all_group << 33) | self._rank_bits(all_score), stable=True)
        sorted_group = all_group[order]
        counts = torch.bincount(sorted_group, minlength=n_touched)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(sorted_group.numel(), device=device) - starts[sorted_group]
        keep = order[rank < n]  # every group has >= n entries (its n slots): exactly T*n
        self.score[touched] = all_score[keep].view(n_touched, n)
        self.token[touched] = all_token[keep].view(n_touched, n)
        is_new = keep >= n_old
        new_rows = payload_of(keep[is_new] - n_old)
        position = keep.clone()
        position[is_new] = n_old + torch.arange(int(is_new.sum()), device=group.device)
        for name, values in self.payload.items():
            tail = values.shape[2:]
            flat = torch.cat([values[touched].reshape(-1, *tail), new_rows[name].to(values.dtype)])
            values[touched] = flat[position].view(n_touched, n, *tail)

    def _rank_bits(self, score: torch.Tensor) -> torch.Tensor:
        """Non-negative int64 < 2**33 that sorts ascending in the order best-first."""
        if self.descending:
            # Scores are float32 activations: order their bit patterns, then flip. Adding 0
            # turns -0.0 into 0.0: the two tie, as in the compiled insertion (kernels_cpu).
            bits = (score.float() + 0.0).view(torch.int32).long()
            ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # monotone in the value
            return (2**31 - 1) - ordered  # in [0, 2**32): largest value first
        # Sampling keys have 32-bit resolution in [0, 1); empty slots (inf) sort last.
        return torch.where(torch.isinf(score), torch.full_like(score, 2.0**32), score * 2.0**32).long()

    def merge(self, other: GroupedTopK) -> None:
        real = other.token.reshape(-1) >= 0
        group = torch.arange(self.n_groups, device=real.device).repeat_interleave(self.n)[real]
        flat = {k: v.reshape(-1, *v.shape[2:])[real] for k, v in other.payload.items()}
        self.add(
            group,
            other.score.reshape(-1)[real],
            other.token.reshape(-1)[real],
            lambda index: {k: v[index] for k, v in flat.items()},
        )

    def state_dict(self) -> dict:
        return {"score": self.score, "token": self.token, "payload": dict(self.payload)}

    def load_state_dict(self, state: dict) -> None:
        self.score = state["score"]
        self.token = state["token"]
        self.payload = dict(state["payload"])
