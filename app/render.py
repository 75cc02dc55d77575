"""Templates (Jinja2 with block rendering for htmx fragments) and their helpers."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jinja2_fragments.fastapi import Jinja2Blocks
from markupsafe import Markup, escape

from . import urls
from .histogram import histogram_markup
from .resources import resource_dir


def tint(act: float, scale: float) -> str:
    """Inline style for a token: --a is the strength 0..1 of the unit's colour."""
    a = min(abs(act) / scale, 1.0) if scale > 0 else 0.0
    return f"--a:{a:.3f}"


@lru_cache(maxsize=65536)
def _token_parts(tok: str) -> tuple[str, str]:
    """(escaped text as shown, escaped JSON label) of a token: computed once per token."""
    return str(escape(show_token(tok))), str(escape(json.dumps(tok, ensure_ascii=False)))


def tokens_html(toks: list[str], acts: list[float], scale: float, focus: int | None = None,
                bos: bool = False) -> Markup:
    """Tinted token spans (the hot loop of every page, so built here, escaped here).

    Each span: class t (+ neg for negative values, + focus), --a = |act| / scale,
    title `"<token>": <act>` for hover without JS, data-act for the tooltip and tests.
    With `bos`, toks[0] is the BOS token: shown untinted (statistics never count it and
    its activation is often off the scale), its value still in the title.
    """
    inv = 1.0 / scale if scale > 0 else 0.0
    parts = ['<span class="toks">']
    append = parts.append
    for i, (tok, act) in enumerate(zip(toks, acts)):
        a = abs(act) * inv
        cls = "t neg" if act < 0 else "t"
        if bos and i == 0:
            a, cls = 0.0, "t bos"
        if i == focus:
            cls += " focus"
        shown, label = _token_parts(tok)
        value = f"{act:.4f}"
        append(f'<span class="{cls}" style="--a:{a if a < 1.0 else 1.0:.3f}" tabindex="0" '
               f'title="{label}: {value}" data-act="{value}">{shown}</span>')
    append("</span>")
    return Markup("".join(parts))


def show_token(tok: str) -> str:
    """A token's text as shown in running text (newlines visible)."""
    return tok.replace("\n", "\u21b5\n").replace("\t", "\u21e5\t")


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 10 ** -(digits) or abs(value) >= 10 ** 6):
            return f"{value:.{digits}e}"
        return f"{value:.{digits}f}"
    return str(value)


def pct(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "\u2013"
    v = value * 100
    if 0 < v < 10 ** -digits:
        return f"<{10 ** -digits:g}%"
    return f"{v:.{digits}f}%"


def make_templates() -> Jinja2Blocks:
    directory = str(resource_dir("templates"))
    templates = Jinja2Blocks(directory=directory)
    env = templates.env
    env.globals.update(urls=urls, histogram_markup=histogram_markup, tint=tint, tokens_html=tokens_html)
    env.filters.update(fmt=fmt, pct=pct, show_token=show_token,
                       repr_token=lambda t: json.dumps(t, ensure_ascii=False))
    env.trim_blocks = True
    env.lstrip_blocks = True
    return templates
