"""A token's spellings in a vocabulary: what a search for `def` also means.

A visitor types `def` and means the token ` def` as much as `def` or `Def`. Tokenizers
mark a word's leading space with a space (decoded GPT-2), `Ġ` (raw GPT-2) or `▁`
(SentencePiece), so `TokenVariants` groups the vocabulary by its text without one
leading marker, case folded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPACE_MARKERS = (" ", "\u0120", "\u2581")  # a space, GPT-2's Ġ, SentencePiece's ▁


def split_marker(token: str) -> tuple[bool, str]:
    """(has a leading-space marker, the text after it). A token that is only a marker
    keeps it: the space itself is a word."""
    if len(token) > 1 and token[0] in SPACE_MARKERS:
        return True, token[1:]
    return False, token


@dataclass(frozen=True)
class Variant:
    """One token of the vocabulary that a search for `query` matches."""

    token_id: int
    token: str
    exact: bool  # the token's text is the query's
    space: str  # "" (as the query), "with" or "without" a leading-space marker, or "marker" (another one)
    case: bool  # differs from the query in case only

    @property
    def label(self) -> str:
        """How it matched, as the search page says it."""
        if self.exact:
            return "exact"
        if self.space == "marker":
            parts = [f"leading space as {self.token[0]}"]
        else:
            parts = [f"{self.space} leading space"] if self.space else []
        if self.case:
            parts.append("case")
        return ", ".join(parts) or "exact"


class TokenVariants:
    """The vocabulary grouped by text without its leading-space marker, case folded."""

    def __init__(self, vocab: list[str]) -> None:
        groups: dict[str, list[int]] = {}
        for token_id, token in enumerate(vocab):
            groups.setdefault(split_marker(token)[1].casefold(), []).append(token_id)
        self._groups = groups
        self._vocab = vocab
        self._group_of: np.ndarray | None = None

    def group_of(self) -> np.ndarray:
        """int32 [vocabulary]: each token's group number (the groups `match` returns)."""
        if self._group_of is None:
            out = np.zeros(len(self._vocab), dtype=np.int32)
            for number, ids in enumerate(self._groups.values()):
                out[ids] = number
            self._group_of = out
        return self._group_of

    def match(self, query: str) -> list[Variant]:
        """Every token that is `query` with or without a leading-space marker, in any
        case: the exact one first, then by how far it is from the query, then by id."""
        q_space, q_core = split_marker(query)
        out = []
        for token_id in self._groups.get(q_core.casefold(), []):
            token = self._vocab[token_id]
            space, core = split_marker(token)
            if space != q_space:
                how = "with" if space else "without"
            else:
                how = "marker" if space and token[0] != query[0] else ""
            out.append(
                Variant(
                    token_id=token_id,
                    token=token,
                    exact=token == query,
                    space=how,
                    case=core != q_core,
                )
            )
        out.sort(key=lambda v: (not v.exact, bool(v.space), v.case, v.token_id))
        return out
