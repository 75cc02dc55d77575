"""Templates (Jinja2 with block rendering for htmx fragments) and their helpers."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from jinja2_fragments.fastapi import Jinja2Blocks

from . import urls
from .histogram import histogram_svg


def tint(act: float, scale: float) -> str:
    """Inline style for a token: --a is the strength 0..1 of the unit's colour."""
    a = min(abs(act) / scale, 1.0) if scale > 0 else 0.0
    return f"--a:{a:.3f}"


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
    directory = str(files("app") / "templates")
    templates = Jinja2Blocks(directory=directory)
    env = templates.env
    env.globals.update(urls=urls, histogram_svg=histogram_svg, tint=tint)
    env.filters.update(fmt=fmt, pct=pct, show_token=show_token,
                       repr_token=lambda t: json.dumps(t, ensure_ascii=False))
    env.trim_blocks = True
    env.lstrip_blocks = True
    return templates
