"""How tokens are shown: labels from their bytes, tinted spans, multi-token characters.

A token is shown from its raw bytes (the index's vocab.token_bytes), not its decoded
text, so tokens that the decoded text makes look alike can be told apart:
- bytes that are not (part of) valid UTF-8 show as `<0xC3>`, control characters other
  than newline and tab as `<0x1C>` (or `<U+0085>`, `<U+200B>` past ASCII);
- every token carries its id in its title (hover), with its activation where it has one;
- where consecutive tokens of a window hold the pieces of one character between them
  (byte-level BPE splits "é" into two tokens), the character is drawn once across the
  group of tokens: each token stays a span of its own, with its own tint, outline and
  title, laid under the text in proportion to its share of the group's bytes;
- a token holding a newline is one box that ends its line: the box shows the newline as
  `↵`, the line break (and the indentation after it) follows the box.
Tokens are not tab stops: the title is for hovering, and the text reads as text.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import cast

import numpy as np
from markupsafe import Markup, escape

from actscope.app.number_text import fixed
from actscope.indexer.store.reader import is_utf8


def ascii_html(text: str) -> Markup:
    """`text` escaped, with every non-ASCII character as a character reference: the
    browser shows the same text, and a page that is all ASCII is joined and encoded
    by Python several times faster (a unit page: 2 us instead of 70 to encode)."""
    return Markup(str(escape(text)).encode("ascii", "xmlcharrefreplace").decode("ascii"))


# -- labels ----------------------------------------------------------------------------
def _char_length(lead: int) -> int:
    """Bytes of the UTF-8 sequence that `lead` starts (1 for a byte that starts none)."""
    if lead < 0xC2:
        return 1
    if lead < 0xE0:
        return 2
    if lead < 0xF0:
        return 3
    return 4 if lead < 0xF5 else 1


@dataclass(frozen=True)
class Piece:
    """One character of a byte string, or one byte that is no character (`char` None)."""

    start: int  # byte offset
    end: int
    char: str | None


def pieces_of(raw: bytes) -> list[Piece]:
    """`raw` cut into its UTF-8 characters and the bytes that belong to none."""
    out: list[Piece] = []
    p, n = 0, len(raw)
    while p < n:
        length = _char_length(raw[p])
        if length > 1 and p + length <= n:
            try:
                out.append(Piece(p, p + length, raw[p : p + length].decode("utf-8")))
                p += length
                continue
            except UnicodeDecodeError:
                pass
        char = chr(raw[p]) if raw[p] < 0x80 else None
        out.append(Piece(p, p + 1, char))
        p += 1
    return out


def char_label(char: str) -> str:
    """A character as shown: itself, or its code for an invisible control character."""
    if char in "\n\t" or unicodedata.category(char) not in ("Cc", "Cf"):
        return char
    code = ord(char)
    return f"<0x{code:02X}>" if code < 0x80 else f"<U+{code:04X}>"


def piece_label(raw: bytes, piece: Piece) -> str:
    return f"<0x{raw[piece.start]:02X}>" if piece.char is None else char_label(piece.char)


def label(raw: bytes) -> str:
    """A token's bytes as shown: its text, with the bytes that are no character and the
    invisible control characters spelled out (`<0xC3>`)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(piece_label(raw, piece) for piece in pieces_of(raw))
    if text.isprintable() or all(char_label(c) == c for c in text):
        return text
    return "".join(char_label(c) for c in text)


def _width(text: str) -> int:
    """Monospace cells of a label (wide East Asian characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text) or 1


# -- one vocabulary ----------------------------------------------------------------------
@dataclass(frozen=True)
class Cluster:
    """Tokens first .. last of a window whose bytes make characters together."""

    first: int
    last: int
    text: str  # what the group shows: its characters (and any stray bytes as <0xNN>)
    weights: list[float]  # each token's share of the text's width, summing to 1


class TokenTable:
    """How each token of one vocabulary is shown, by token id: built once per model
    when the app starts (a few ms per 10k tokens), so no page escapes a token."""

    def __init__(self, raw: list[bytes]) -> None:
        self.raw = raw
        self.labels = [label(b) for b in raw]
        self.partial = [not is_utf8(b) for b in raw]
        # The same as a set: a page asks "any partial token here?" with one C-level call.
        self.partial_ids = frozenset(i for i, p in enumerate(self.partial) if p)
        # The two constant pieces of each token's span: `" title="<label> (id N)` and
        # `">shown</span>` (+ the line break and indentation after a newline).
        self.titles: list[str] = [
            ascii_html(f"{json.dumps(lab, ensure_ascii=False)} (id {i})") for i, lab in enumerate(self.labels)
        ]
        self.shown = [_shown(lab) for lab in self.labels]
        # A tinted span without its tint and value: `" title="<label> (id N): ` before
        # the value, `">shown</span>` (+ what follows a newline) after it.
        self.before_value = [f'" title="{t}: ' for t in self.titles]
        self.after_value = [f'">{box}</span>{after}' for box, after in self.shown]
        # The same as arrays: numpy picks a page's pieces by token id in one step.
        self.before_array = np.array(self.before_value, dtype=object)
        self.after_array = np.array(self.after_value, dtype=object)
        self._codes: dict[int, Markup] = {}

    def __len__(self) -> int:
        return len(self.raw)

    def title(self, token_id: int) -> str:
        if 0 <= token_id < len(self.titles):
            return self.titles[token_id]
        return f"&lt;{token_id}&gt; (id {token_id})"

    def shown_html(self, token_id: int) -> tuple[str, str]:
        """(the token's box content, what follows the box) as HTML."""
        if 0 <= token_id < len(self.shown):
            return self.shown[token_id]
        return f"&lt;{token_id}&gt;", ""

    def quoted(self, token_id: int) -> Markup:
        """The token's label as a quoted string (JSON escapes), for tables and lists."""
        if 0 <= token_id < len(self.titles):  # the title without its " (id N)"
            return Markup(self.titles[token_id][: -len(f" (id {token_id})")])
        return ascii_html(json.dumps(f"<{token_id}>", ensure_ascii=False))

    def code(self, token_id: int) -> Markup:
        """`<code class="tok">` with the quoted label and the id on hover (kept: logit
        tables show the same tokens again and again)."""
        found = self._codes.get(token_id)
        if found is None:
            found = Markup(f'<code class="tok" title="id {int(token_id)}">{self.quoted(token_id)}</code>')
            if len(self._codes) < 65536:
                self._codes[token_id] = found
        return found

    def clusters(self, ids: list[int]) -> list[Cluster]:
        """The groups of consecutive tokens of `ids` that hold one character between them."""
        partial = self.partial
        n_vocab = len(partial)
        out: list[Cluster] = []
        i, n = 0, len(ids)
        while i < n:
            if not (0 <= ids[i] < n_vocab and partial[ids[i]]):
                i += 1
                continue
            j = i
            while j < n and 0 <= ids[j] < n_vocab and partial[ids[j]]:
                j += 1
            out += self._run_clusters(ids, i, j)
            i = j
        return out

    def _run_clusters(self, ids: list[int], first: int, stop: int) -> list[Cluster]:
        """The clusters inside a run of tokens that are not UTF-8 on their own."""
        parts = [self.raw[ids[k]] for k in range(first, stop)]
        buf = b"".join(parts)
        ends = []  # byte offset where each token of the run ends
        total = 0
        for part in parts:
            total += len(part)
            ends.append(total)

        def token_at(offset: int) -> int:
            return next(k for k, end in enumerate(ends) if offset < end)

        pieces = pieces_of(buf)
        # group[k]: the first token of the group token k belongs to
        group = list(range(len(parts)))
        for piece in pieces:
            a, b = token_at(piece.start), token_at(piece.end - 1)
            for k in range(a + 1, b + 1):
                group[k] = group[a]
        out: list[Cluster] = []
        k = 0
        while k < len(parts):
            m = k
            while m + 1 < len(parts) and group[m + 1] == group[k]:
                m += 1
            if m > k:
                lo, hi = (ends[k - 1] if k else 0), ends[m]
                inside = [p for p in pieces if lo <= p.start < hi]
                weights = [0.0] * (m - k + 1)
                texts = []
                for p in inside:
                    text = piece_label(buf, p)
                    texts.append(text)
                    width = _width(text)
                    for off in range(p.start, p.end):
                        weights[token_at(off) - k] += width / (p.end - p.start)
                total_w = sum(weights) or 1.0
                out.append(Cluster(first + k, first + m, "".join(texts), [w / total_w for w in weights]))
            k = m + 1
        return out


def _shown(lab: str) -> tuple[str, str]:
    """A label as the HTML inside its box, and after it: newlines are marks (↵) in the
    box, the line breaks and whatever follows the last one come after the box, so a
    token that holds a newline stays one box at the end of its line."""
    if "\n" not in lab:
        return str(ascii_html(lab)).replace("\t", "&#8677;\t"), ""
    head, _, tail = lab.rpartition("\n")
    box = str(ascii_html(head + "\n")).replace("\n", "&#8629;").replace("\t", "&#8677;\t")
    after = "\n" * (head.count("\n") + 1)
    if tail:
        after += f'<span class="t-tail">{ascii_html(tail)}</span>'
    return box, after


# -- tinted spans ------------------------------------------------------------------------
# Tint strengths 0.000..1.000 by thousandths: a list index instead of a float format
# per token.
_TINT = tuple(f"{i / 1000:.3f}" for i in range(1001))
# The opening of a token span by tint strength, positive and negative values.
_OPEN = tuple(f'<span class="t" style="--a:{t}' for t in _TINT)
_OPEN_NEG = tuple(f'<span class="t neg" style="--a:{t}' for t in _TINT)


def _strength(a: float) -> str:
    """`a` (tint strength in thousandths) as --a, clipped to 1."""
    return _TINT[int(a + 0.5)] if a < 999.5 else "1.000"


def tokens_html(
    table: TokenTable,
    ids: list[int],
    acts: Sequence[float | None] | None,
    scale: float,
    focus: int | None = None,
    bos: bool = False,
) -> Markup:
    """Tinted token spans (the hot loop of every page, so built here, escaped here).

    Each span: class t (+ neg for negative values, + focus), --a = |act| / scale,
    title `"<token>" (id N): <act>` for hover without JS, data-act for the tooltip and
    tests. With `bos`, ids[0] is the BOS token: shown untinted (statistics never count
    it and its activation is often off the scale), its value still in the title.
    Without `acts`, untinted spans with the token and its id in the title.
    """
    out: list[str] = []
    append_spans(out, table, ids, acts, scale, focus, bos)
    return Markup("".join(out))


def append_spans(
    out: list[str],
    table: TokenTable,
    ids: list[int],
    acts: Sequence[float | None] | None,
    scale: float,
    focus: int | None,
    bos: bool,
) -> None:
    """tokens_html() into `out`, so a list of examples is joined (copied) only once."""
    first = len(out) + 1  # where the span of ids[0] goes
    append = out.append
    append('<span class="toks">')
    titles, shown, n_vocab = table.titles, table.shown, len(table)
    if acts is None:
        for i, tid in enumerate(ids):
            box, after = table.shown_html(tid)
            cls = "t focus" if i == focus else "t"
            append(f'<span class="{cls}" title="{table.title(tid)}">{box}</span>{after}')
        n = len(ids)
        values: list[str] = [""] * n
    else:
        unmeasured: list[int] = []
        numbers: Sequence[float] = cast(Sequence[float], acts)
        if None in acts:  # not measured (a --dla twin's last token: no next token)
            unmeasured = [i for i, a in enumerate(acts) if a is None]
            numbers = [0.0 if a is None else a for a in acts]
        inv = 1000.0 / scale if scale > 0 else 0.0
        pos, neg = _OPEN, _OPEN_NEG
        n = min(len(ids), len(numbers))
        # All values in one % format (half the cost of one f-string per token).
        values = ("%.4f\n" * n % tuple(numbers[:n])).split("\n")
        # `a` is the tint strength in thousandths + 0.5 (rounding); NaN and inf fall to
        # full strength.
        for tid, act, value in zip(ids, numbers, values):
            if 0 <= tid < n_vocab:
                title = titles[tid]
                box, after = shown[tid]
            else:
                title, (box, after) = table.title(tid), table.shown_html(tid)
            if act < 0:
                a = 0.5 - act * inv
                head = neg[int(a)] if a < 1000 else neg[1000]
            else:
                a = act * inv + 0.5
                head = pos[int(a)] if a < 1000 else pos[1000]
            append(f'{head}" title="{title}: {value}" data-act="{value}">{box}</span>{after}')
        if focus is not None and 0 <= focus < n and not (bos and focus == 0):
            act = numbers[focus]
            out[first + focus] = _span(
                table, "t neg focus" if act < 0 else "t focus", _strength(abs(act) * inv), ids[focus], values[focus]
            )
        if bos and n:
            out[first] = _span(table, "t bos focus" if focus == 0 else "t bos", "0.000", ids[0], values[0])
        for i in unmeasured:
            if i < n:
                box, after = table.shown_html(ids[i])
                cls = "t unmeasured focus" if i == focus else "t unmeasured"
                out[first + i] = f'<span class="{cls}" title="{table.title(ids[i])}: not measured">{box}</span>{after}'
                values[i] = ""
    if not table.partial_ids.isdisjoint(ids[:n]):
        _draw_clusters(out, first, table, ids[:n], values, focus)
    append("</span>")


@dataclass(frozen=True)
class Window:
    """Token ids with their activations, as tokens_html() takes them."""

    ids: list[int]
    acts: list[float]
    focus: int | None = None
    bos: bool = False


# Every span opening, positive ones then negative ones, by tint strength (also as an
# array: numpy picks a page's openings in one step).
_OPENINGS = _OPEN + _OPEN_NEG
_OPENINGS_ARRAY = np.array(_OPENINGS, dtype=object)
_VALUE_AGAIN = '" data-act="'


def windows_html(table: TokenTable, windows: list[Window], scale: float) -> list[str]:
    """[tokens_html(table, w.ids, w.acts, scale, w.focus, w.bos) for w in windows], the
    same bytes, built for all windows at once: the tints and values of all their tokens
    in a few whole-list operations, each span joined from pieces the table keeps per
    token id (a unit page's twenty examples: a third of the time)."""
    acts = list(chain.from_iterable(w.acts for w in windows))
    if not acts:
        return [str(tokens_html(table, w.ids, w.acts, scale, w.focus, w.bos)) for w in windows]
    a = np.array(acts, dtype=np.float64)
    values = fixed(a, 4)
    inv = 1000.0 / scale if scale > 0 else 0.0
    # Tint strength in thousandths, rounded; NaN and inf at full strength (as in
    # append_spans); negative values take the negative openings.
    strength = np.abs(a) * inv + 0.5
    opening = np.where(strength < 1000, strength, 1000).astype(np.intp) + (a < 0) * len(_OPEN)
    heads = _OPENINGS_ARRAY[opening].tolist()
    before, after, n_vocab, partial = table.before_value, table.after_value, len(table), table.partial_ids
    # Whether every window's ids are plain (in the vocabulary, none a partial character),
    # one pass over all of them: then no window needs its own check, and the pieces of
    # all their spans are picked by id in one step.
    all_ids = list(chain.from_iterable(w.ids for w in windows))
    plain = bool(all_ids) and min(all_ids) >= 0 and max(all_ids) < n_vocab and partial.isdisjoint(all_ids)
    if plain and all(len(w.ids) == len(w.acts) for w in windows):
        picked = np.array(all_ids, dtype=np.intp)
        befores, afters = table.before_array[picked].tolist(), table.after_array[picked].tolist()
    else:
        befores = afters = None
    out = []
    first = 0
    for w in windows:
        ids, n = w.ids, len(w.acts)
        last = first + n
        if n != len(ids) or not n or not (plain or (min(ids) >= 0 and max(ids) < n_vocab and partial.isdisjoint(ids))):
            out.append(str(tokens_html(table, ids, w.acts, scale, w.focus, w.bos)))
            first = last
            continue
        parts = [_VALUE_AGAIN] * (6 * n + 2)
        parts[0], parts[-1] = '<span class="toks">', "</span>"
        parts[1:-1:6] = heads[first:last]
        parts[3:-1:6] = parts[5:-1:6] = values[first:last]
        if befores is not None:
            parts[2:-1:6], parts[6:-1:6] = befores[first:last], afters[first:last]
        else:
            parts[2:-1:6], parts[6:-1:6] = map(before.__getitem__, ids), map(after.__getitem__, ids)
        focus = w.focus
        if focus is not None and 0 <= focus < n and not (w.bos and focus == 0):
            act = w.acts[focus]
            cls = "t neg focus" if act < 0 else "t focus"
            span = _span(table, cls, _strength(abs(act) * inv), ids[focus], values[first + focus])
            parts[6 * focus + 1 : 6 * focus + 7] = (span, "", "", "", "", "")
        if w.bos:
            span = _span(table, "t bos focus" if focus == 0 else "t bos", "0.000", ids[0], values[first])
            parts[1:7] = (span, "", "", "", "", "")
        out.append("".join(parts))
        first = last
    return out


def _span(table: TokenTable, cls: str, strength: str, tid: int, value: str) -> str:
    box, after = table.shown_html(tid)
    return (
        f'<span class="{cls}" style="--a:{strength}" title="{table.title(tid)}: {value}" '
        f'data-act="{value}">{box}</span>{after}'
    )


def _draw_clusters(
    out: list[str], first: int, table: TokenTable, ids: list[int], values: list[str], focus: int | None
) -> None:
    """Replace the spans of each group of tokens that make characters together by one
    box drawing the characters over the group's tokens (see the module's docstring)."""
    for cluster in table.clusters(ids):
        cells = []
        quoted = ascii_html(json.dumps(cluster.text, ensure_ascii=False))
        for k, weight in zip(range(cluster.first, cluster.last + 1), cluster.weights):
            geometry = f"width:{weight * 100:.2f}%"
            span = out[first + k]
            if values[k] == "":
                # No value: an untinted span, or one not measured (dotted), as outside a group.
                cls = span[len('<span class="') : span.index('"', len('<span class="'))]
                note = ": not measured" if "unmeasured" in cls.split() else ""
                cell = f'<span class="{cls}" style="{geometry}" title="{table.title(ids[k])} in {quoted}{note}"></span>'
            else:  # the token's own span, emptied and placed under its share of the text
                head = span[: span.index('" title=')]
                cell = (
                    f'{head};{geometry}" title="{table.title(ids[k])} in {quoted}: {values[k]}" '
                    f'data-act="{values[k]}"></span>'
                )
            cells.append(cell)
            out[first + k] = ""
        text = str(ascii_html(cluster.text)).replace("\n", "&#8629;")
        out[first + cluster.first] = (
            f'<span class="chars"><span class="chars-cells">{"".join(cells)}</span>'
            f'<span class="chars-text">{text}</span></span>'
        )
