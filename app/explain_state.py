"""A unit page's `explain` parameter: which attribution (or minimal-example summary) the
page shows, loaded into it after the page by htmx (a plain link without JavaScript)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from actscope.app.errors import AppError, bad_input
from actscope.app.urls import URLs


@dataclass(frozen=True)
class UnitExplain:
    """What a unit page's `explain` parameter asks to show: the attribution of one example
    (`SEQ:POS`), of the visitor's text (`text`, or `text:POS`), or the minimal-example
    line of the top examples (`top`)."""

    key: str
    seq: int | None = None
    pos: int | None = None
    text: bool = False
    top: bool = False


def unit_explain(value: str | None) -> UnitExplain | None:
    if value is None or value == "":
        return None
    if value == "top":
        return UnitExplain(value, top=True)
    head, sep, pos = value.partition(":")
    if head == "text" and (not sep or (pos.isascii() and pos.isdigit())):
        return UnitExplain(value, pos=int(pos) if sep else None, text=True)
    if sep and head.isascii() and head.isdigit() and pos.isascii() and pos.isdigit():
        return UnitExplain(value, seq=int(head), pos=int(pos))
    raise bad_input(f"explain must be SEQ:POS (an example), text, text:POS or top, not {value!r}.")


def unit_page_part(
    urls: URLs, model: str, source: str, index: int, value: str | None, text: str | None
) -> dict[str, Any] | None:
    """The unit page's `explain` data: what it asks, and the URL its block loads from
    (`url`: the explanation's page, whose htmx fragment the block swaps in). A value it
    cannot read is `error` (the page shows it by the examples; its links drop it)."""
    try:
        asked = unit_explain(value)
    except AppError as exc:
        return {"key": None, "seq": None, "pos": None, "text": False, "top": False, "url": None, "error": exc.message}
    if asked is None:
        return None
    url: str | None
    if asked.top:
        url = urls.minimal(model, source, index)
    elif asked.text:
        url = urls.explain(model, source, index, text=text, pos=asked.pos) if text else None
    else:
        url = urls.explain(model, source, index, seq=asked.seq, pos=asked.pos)
    return {
        "key": asked.key,
        "seq": asked.seq,
        "pos": asked.pos,
        "text": asked.text,
        "top": asked.top,
        "url": url,
        "error": None,
    }


def unapplied(part: dict[str, Any] | None, has_text: bool, shown_top: bool, on_page: Sequence[Any]) -> str | None:
    """Why the page cannot show what its `explain` asks, or None when it does: each case
    said next to where it would be. `on_page`: the examples shown (with .seq and .pos)."""
    if part is None or part["error"] is not None:
        return None
    key = part["key"]
    if part["text"] and not has_text:
        return f"explain={key} shows what mattered in your own text: type one in the box above first."
    if part["top"] and not shown_top:
        return f"explain={key} sums up the top examples: it shows with the Top examples."
    if part["seq"] is not None and not any((ex.seq, ex.pos) == (part["seq"], part["pos"]) for ex in on_page):
        return f"The example asked for (explain={key}) is not among the examples shown here."
    return None


def kept(part: dict[str, Any] | None, to_top: bool) -> str | None:
    """The `explain` state a link to another example set (or page of one) keeps: the
    visitor's text's explanation always, the top examples' summary on the top set only;
    one example's never (it may not be in that set)."""
    if part is None or part["key"] is None:
        return None
    if part["text"] or (part["top"] and to_top):
        return str(part["key"])
    return None
