"""Keep the best n entries of each of G groups, merging candidates batch after batch.

Used twice: per-unit top-k examples (group = unit, score = activation, highest first)
and per-(unit, band) priority samples (group = unit*n_bands + band, score = random key,
lowest first). Entries carry a payload (token id, activation, window...). Merging two
states is the same operation as merging candidates, which makes runs resumable and
shardable. Ties are broken by the smaller token id so results never depend on batching.
"""

from __future__ import annotations

import torch


class GroupedTopK:
    def __init__(self, n_groups: int, n: int, descending: bool, payload_shapes: dict[str, tuple],
                 payload_dtypes: dict[str, torch.dtype], device) -> None:
        self.n_groups = n_groups
        self.n = n
        self.descending = descending
        empty = float("-inf") if descending else float("inf")
        # score [G, n], sorted best first; unused slots hold the worst possible score.
        self.score = torch.full((n_groups, n), empty, dtype=torch.float64, device=device)
        self.token = torch.full((n_groups, n), -1, dtype=torch.int64, device=device)
        self.payload = {
            name: torch.full((n_groups, n, *shape),
                             float("nan") if payload_dtypes[name].is_floating_point else -1,
                             dtype=payload_dtypes[name], device=device)
            for name, shape in payload_shapes.items()
        }

    def threshold(self) -> torch.Tensor:
        """[G] score a candidate must beat to enter its group (the n-th best so far)."""
        return self.score[:, -1]

    def filled(self) -> torch.Tensor:
        """[G] bool: the group holds n real entries."""
        return self.token[:, -1] >= 0

    def add(self, group: torch.Tensor, score: torch.Tensor, token: torch.Tensor,
            payload: dict[str, torch.Tensor]) -> None:
        """Merge candidates (1-D group/score/token, payload rows) into the state."""
        if group.numel() == 0:
            return
        n = self.n
        # Only the groups that received candidates are rewritten: after warm-up they are
        # few, and the payload (example windows) is the bulk of the state.
        touched, local = torch.unique(group, return_inverse=True)
        n_touched = touched.numel()
        old_score = self.score[touched]
        old_token = self.token[touched]
        all_group = torch.cat([torch.arange(n_touched, device=group.device).repeat_interleave(n), local])
        all_score = torch.cat([old_score.reshape(-1), score.to(torch.float64)])
        all_token = torch.cat([old_token.reshape(-1), token])
        # Lexicographic order (group asc, score best-first, token asc) by stable sorts,
        # least significant key first.
        order = torch.argsort(all_token, stable=True)
        order = order[torch.argsort(all_score[order], descending=self.descending, stable=True)]
        order = order[torch.argsort(all_group[order], stable=True)]
        sorted_group = all_group[order]
        counts = torch.bincount(sorted_group, minlength=n_touched)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(sorted_group.numel(), device=group.device) - starts[sorted_group]
        keep = order[rank < n]  # every group has >= n entries (its n slots): exactly T*n
        self.score[touched] = all_score[keep].view(n_touched, n)
        self.token[touched] = all_token[keep].view(n_touched, n)
        for name, values in self.payload.items():
            tail = values.shape[2:]
            flat = torch.cat([values[touched].reshape(-1, *tail), payload[name].to(values.dtype)])
            values[touched] = flat[keep].view(n_touched, n, *tail)

    def merge(self, other: "GroupedTopK") -> None:
        real = other.token.reshape(-1) >= 0
        group = torch.arange(self.n_groups, device=real.device).repeat_interleave(self.n)[real]
        self.add(group, other.score.reshape(-1)[real], other.token.reshape(-1)[real],
                 {k: v.reshape(-1, *v.shape[2:])[real] for k, v in other.payload.items()})

    def state_dict(self) -> dict:
        return {"score": self.score, "token": self.token, "payload": dict(self.payload)}

    def load_state_dict(self, state: dict) -> None:
        self.score = state["score"]
        self.token = state["token"]
        self.payload = dict(state["payload"])
