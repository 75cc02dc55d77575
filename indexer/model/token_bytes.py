"""The raw bytes of every token of a vocabulary, from its tokenizer.

A token's decoded text loses bytes: a byte-level BPE token that holds half of "é"
decodes to U+FFFD. The index stores each token's bytes, so pages can show such a token
as its bytes (`<0xC3>`) and draw the characters that consecutive tokens make together.

How the bytes are found, by what the tokenizer says it is:
- byte-level BPE (GPT-2 and its kin: a `ByteLevel` decoder): each character of the
  token's string stands for one byte, through GPT-2's printable byte alphabet;
- SentencePiece with byte fallback (Llama and its kin): `<0xNN>` tokens are the byte NN,
  other tokens are their text with `▁` for a space;
- anything else, and special tokens: the UTF-8 of the token decoded on its own.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
SPIECE_SPACE = "\u2581"


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable bytes stand for
    themselves, the others for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def _decoder_types(tokenizer: Any) -> set[str]:
    """The types of a fast tokenizer's decoder and of the decoders it chains."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (AttributeError, TypeError, ValueError):
        return set()
    parts = decoder.get("decoders") or [decoder]
    return {str(p.get("type")) for p in parts if isinstance(p, dict)}


def vocab_bytes(tokenizer: Any, size: int) -> list[bytes]:
    """The bytes of tokens 0 .. size-1 (ids past the tokenizer's vocabulary: b"")."""
    n = min(size, len(tokenizer))
    strings = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special |= set(added)
    types = _decoder_types(tokenizer)
    slow_decoder = getattr(tokenizer, "byte_decoder", None)  # the slow GPT-2 tokenizer's
    if "ByteLevel" in types or isinstance(slow_decoder, dict):
        alphabet: dict[str, int] = byte_decoder() if "ByteLevel" in types else dict(slow_decoder or {})
        mapped = [_mapped(s, alphabet) if i not in special else None for i, s in enumerate(strings)]
    elif "ByteFallback" in types or any(s and _BYTE_TOKEN.fullmatch(s) for s in strings):
        mapped = [_spiece(s) if i not in special else None for i, s in enumerate(strings)]
    else:
        mapped = [None] * n
    missing = [i for i, b in enumerate(mapped) if b is None]
    decoded = tokenizer.batch_decode([[i] for i in missing]) if missing else []
    for i, text in zip(missing, decoded):
        mapped[i] = text.encode("utf-8")
    return [b or b"" for b in mapped] + [b""] * (size - n)


def _mapped(token: str | None, alphabet: dict[str, int]) -> bytes | None:
    if token is None:
        return None
    try:
        return bytes(alphabet[c] for c in token)
    except KeyError:  # not in the byte alphabet: a token the tokenizer added as text
        return None


def _spiece(token: str | None) -> bytes | None:
    if token is None:
        return None
    m = _BYTE_TOKEN.fullmatch(token)
    if m:
        return bytes([int(m.group(1), 16)])
    return token.replace(SPIECE_SPACE, " ").encode("utf-8")
