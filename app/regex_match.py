"""Which tokens of a sequence a regular expression matches (the hypothesis test's rule).

A sequence is decoded without its BOS, special tokens decoding to nothing. A token is
matched when a non-empty match of the pattern (`finditer`) has its last character, at
`m.end() - 1`, inside the token's text. Token k's text is where the decoded prefixes
end: it spans [len(decode(ids[1:k])), len(decode(ids[1:k + 1]))) of the decoded
sequence. A token holding the first bytes of a character that the next token completes
ends its prefix with that character (as U+FFFD), so the character is that token's, and
the completing token's span is empty.

Patterns are Python `re` patterns, checked by `re.compile` (its error is the visitor's).
They are matched by the `regex` module in its re-compatible mode (VERSION0), which can
stop a match that runs too long: a pattern that backtracks catastrophically, such as
`(a+)+$`, fails once the time limit of the whole test is spent instead of holding the
server (`concurrent=True`: the match runs without the GIL).
"""

from __future__ import annotations

import importlib
import re
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np
import regex

MAX_PATTERN_CHARS = 1000
MAX_EXPANDED = 10_000  # items of a pattern with its counted repeats unrolled
MAX_TIMEOUT_S = 86_400.0  # a deadline further off than this is none


class PatternError(ValueError):
    """A pattern that cannot be used, with the reason for the visitor."""


@dataclass(frozen=True)
class Decoded:
    """A sequence's text (BOS left out) and where each token's text ends in it: token k
    spans text[ends[k - 1]:ends[k]] (BOS, k = 0, is empty: ends[0] == 0)."""

    text: str
    ends: np.ndarray  # int64 [n_tokens]


def compile_pattern(pattern: str) -> regex.Pattern:
    """The pattern ready to match; PatternError says what is wrong with it."""
    if not pattern:
        raise PatternError("The regular expression is empty: type a pattern, e.g. \\bdef\\b.")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(
            f"The regular expression is {len(pattern):,} characters long; the limit is {MAX_PATTERN_CHARS:,}."
        )
    try:
        with warnings.catch_warnings():
            # re warns where a pattern's meaning will change (e.g. "[[" as a nested set):
            # the regex module already reads it the new way, so refuse it.
            warnings.simplefilter("error")
            re.compile(pattern)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        raise PatternError(f"Not a valid regular expression: {exc.msg}{where}.") from None
    except (FutureWarning, DeprecationWarning) as exc:
        raise PatternError(f"Ambiguous regular expression: {exc}; escape the character to match it.") from None
    except (OverflowError, RecursionError, ValueError) as exc:
        raise PatternError(f"Not a usable regular expression: {exc}.") from None
    size = _expanded_size(_parse(pattern))
    if size > MAX_EXPANDED:
        # The regex module unrolls counted repeats when it compiles (x{10000000}: ~17 s).
        raise PatternError(
            f"The regular expression's counted repeats are too large ({size:,} items once unrolled; the "
            f"limit is {MAX_EXPANDED:,}): use + or * instead of large {{m,n}} counts."
        )
    try:
        return regex.compile(pattern, flags=regex.VERSION0)
    except (regex.error, OverflowError, RecursionError, ValueError) as exc:
        raise PatternError(f"Not a usable regular expression: {exc}.") from None


def _parse(pattern: str):
    """re's parse tree of a pattern re.compile accepted."""
    parser: Any = getattr(re, "_parser", None)  # Python 3.11+; sre_parse before
    if parser is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            parser = importlib.import_module("sre_parse")
    return parser.parse(pattern)


def _expanded_size(tree) -> int:
    """Items of a parsed pattern once every counted repeat is unrolled (an unbounded
    repeat counted by its minimum)."""
    c: Any = getattr(re, "_constants", None) or importlib.import_module("sre_constants")  # 3.11+ / before
    repeats = {c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", c.MAX_REPEAT)}
    total = 0
    for op, av in tree:
        if op in repeats:
            low, high, item = av
            total += max(1, low if high == c.MAXREPEAT else high) * _expanded_size(item)
        elif op == c.SUBPATTERN:
            total += _expanded_size(av[-1])
        elif op == c.BRANCH:
            total += sum(_expanded_size(branch) for branch in av[1])
        elif op in (c.ASSERT, c.ASSERT_NOT):
            total += _expanded_size(av[1])
        elif op == c.GROUPREF_EXISTS:
            total += sum(_expanded_size(part) for part in av[1:] if part is not None)
        elif op == getattr(c, "ATOMIC_GROUP", None):
            total += _expanded_size(av)
        else:
            total += 1
    return total


def decode_sequences(
    sequences: list[list[int]],
    decode_batch: Callable[[list[list[int]]], list[str]],
    special: Collection[int],
    token_bytes: Sequence[bytes] | None = None,
) -> list[Decoded]:
    """Each sequence (BOS first) decoded by its prefixes. `decode_batch` decodes token
    lists (the tokenizer's decode, without clean-up); `special` tokens decode to nothing.

    With `token_bytes` (each token's raw bytes), a sequence whose decoded text is its
    bytes decoded as UTF-8 (U+FFFD for a broken character, as byte-level BPE decodes)
    has its prefixes decoded from the bytes: the same texts, ~100x faster than one
    decode per prefix. Any other sequence is decoded prefix by prefix."""
    kept_lists = [[i for i in ids[1:] if i not in special] for ids in sequences]
    fulls = decode_batch(kept_lists)
    lengths: list[list[int] | None] = [
        _byte_prefix_lengths(kept, token_bytes, full) if token_bytes is not None else None
        for kept, full in zip(kept_lists, fulls)
    ]
    slow = [i for i, found in enumerate(lengths) if found is None]
    texts = iter(decode_batch([kept_lists[i][: k + 1] for i in slow for k in range(len(kept_lists[i]))]))
    for i in slow:
        lengths[i] = [len(next(texts)) for _ in kept_lists[i]]
    return [_decoded(ids, special, found or [], full) for ids, found, full in zip(sequences, lengths, fulls)]


def _byte_prefix_lengths(kept: list[int], token_bytes: Sequence[bytes], full: str) -> list[int] | None:
    """len(decode(kept[:k + 1])) for every k, from the tokens' bytes; None when the
    bytes do not decode to the tokenizer's text."""
    n = len(token_bytes)
    parts = [token_bytes[i] if 0 <= i < n else b"" for i in kept]
    raw = b"".join(parts)
    ends = np.fromiter(accumulate(map(len, parts)), dtype=np.int64, count=len(parts))
    try:
        valid = raw.decode("utf-8") == full
    except UnicodeDecodeError:  # a stray byte: decode each prefix as the tokenizer would
        if raw.decode("utf-8", "replace") != full:
            return None
        return [len(raw[:end].decode("utf-8", "replace")) for end in ends.tolist()]
    if not valid:
        return None
    # Valid UTF-8: a prefix decodes to one character per lead byte (a character it cuts
    # short is one U+FFFD).
    leads = np.cumsum((np.frombuffer(raw, dtype=np.uint8) & 0xC0) != 0x80)
    return np.where(ends > 0, leads[np.maximum(ends, 1) - 1], 0).tolist()


def _decoded(ids: list[int], special: Collection[int], lengths: list[int], full: str) -> Decoded:
    ends = np.zeros(len(ids), dtype=np.int64)
    j = end = 0
    for k, token in enumerate(ids[1:], start=1):
        if token not in special:
            end = lengths[j]
            j += 1
        ends[k] = end
    # A decoder that shortened a prefix (none should) must not give spans backwards.
    np.maximum.accumulate(ends, out=ends)
    np.minimum(ends, len(full), out=ends)
    return Decoded(full, ends)


def matched_tokens(pattern: regex.Pattern, decoded: Decoded, deadline: float) -> np.ndarray:
    """bool [n_tokens]: the tokens whose text holds the last character of a non-empty
    match. TimeoutError once `deadline` (time.monotonic) has passed."""
    matched = np.zeros(len(decoded.ends), dtype=bool)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("regex time limit")
    timeout = remaining if remaining < MAX_TIMEOUT_S else None
    found = pattern.finditer(decoded.text, timeout=timeout, concurrent=True)
    last = [m.end() - 1 for m in found if m.end() > m.start()]
    if last:
        # The token whose span [ends[k-1], ends[k]) holds the character.
        matched[np.searchsorted(decoded.ends, np.array(last), side="right")] = True
    return matched
