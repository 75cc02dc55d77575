"""Geometry of a unit's activation histogram, drawn as SVG by the unit template."""

from __future__ import annotations

import math
from typing import Any

WIDTH, HEIGHT, PAD_X = 600, 180, 8
# Label text is at most LABEL_FONT user units high (style.css: larger on phones, where the
# drawing is scaled down); extents are estimated from it, generously, so labels never
# overlap at any width.
LABEL_FONT = 18
CHAR_W = 0.68 * LABEL_FONT
ROW_H = round(LABEL_FONT * 1.3)  # a text box is ~1.15 em high
MAX_ROWS = 3
GAP = 6
PAD_BOTTOM = LABEL_FONT + 8


def _text_width(text: str) -> float:
    return len(text) * CHAR_W


def _label_rows(marks: list[dict[str, Any]]) -> int:
    """Give each band mark's label a row (0 = top) where it overlaps no other label, in
    x order, or none (label False) when MAX_ROWS rows are full there. Returns the rows used."""
    ends: list[float] = []  # right end of the last label of each row
    for m in marks:
        w = _text_width(f"B{m['band']}")
        # Labels sit right of their line, or left of it near the right edge.
        start = m["x"] + 2 if m["x"] + 2 + w <= WIDTH else m["x"] - 2 - w
        m["anchor"] = "start" if start > m["x"] else "end"
        m["label_x"] = round(m["x"] + 2 if m["anchor"] == "start" else m["x"] - 2, 2)
        m["label"] = False
        for row, end in enumerate(ends + [float("-inf")]):
            if row < MAX_ROWS and end + GAP <= start:
                if row == len(ends):
                    ends.append(0.0)
                ends[row] = start + w
                m["row"], m["label"] = row, True
                break
    return len(ends)


def _ticks(lo: float, hi: float, x) -> list[dict[str, Any]]:
    """Axis labels at the two ends and at 0, dropping 0 where it would touch an end label."""
    ends = (
        [(round(x(lo), 2), lo, "start"), (round(x(hi), 2), hi, "end")] if hi > lo else [(round(x(lo), 2), lo, "start")]
    )
    ticks = [{"x": tx, "label": f"{v:.3g}", "anchor": a} for tx, v, a in ends]
    if lo < 0.0 < hi:
        zx = round(x(0.0), 2)
        half = _text_width("0") / 2
        left = ticks[0]["x"] + _text_width(ticks[0]["label"])
        right = ticks[-1]["x"] - _text_width(ticks[-1]["label"])
        if left + GAP <= zx - half and zx + half + GAP <= right:
            ticks.insert(1, {"x": zx, "label": "0", "anchor": "middle"})
    return ticks


def histogram_svg(edges: list[float], counts: list[int], bands: list[dict[str, Any]]) -> dict[str, Any]:
    """Bars (log-scaled counts), band edge markers with their labels in rows above the
    bars, and axis labels, in SVG user units. Bands no token fell in get no marker."""
    if len(edges) < 2 or not counts:
        return {"width": WIDTH, "height": HEIGHT, "bars": [], "marks": [], "ticks": []}
    lo, hi = edges[0], edges[-1]
    span = (hi - lo) or 1.0
    plot_w = WIDTH - 2 * PAD_X

    def x(v: float) -> float:
        return PAD_X + (v - lo) / span * plot_w

    marks = [
        {"x": round(x(b["lo"]), 2), "band": b["band"], "value": b["lo"]}
        for b in bands
        if lo < b["lo"] < hi and b.get("count", 1) > 0
    ]
    rows = _label_rows(marks)
    pad_top = rows * ROW_H + 4
    for m in marks:
        if m["label"]:
            m["label_y"] = m["row"] * ROW_H + LABEL_FONT
    plot_h = HEIGHT - pad_top - PAD_BOTTOM
    logs = list(map(math.log1p, counts))
    top = max(logs) or 1.0
    # Bars as columns (x, y, width, height), one value per bar (x(v) written out: a
    # call per edge cost more than the arithmetic).
    xs = [PAD_X + (v - lo) / span * plot_w for v in edges]
    hs = [c / top * plot_h for c in logs]
    bars = {
        "x": xs[:-1],
        "y": [pad_top + plot_h - h for h in hs],
        "w": [max(x1 - x0 - 0.5, 0.5) for x0, x1 in zip(xs, xs[1:])],
        "h": hs,
    }
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "bars": bars,
        "marks": marks,
        "ticks": _ticks(lo, hi, x),
        "baseline": pad_top + plot_h,
        "top": pad_top,
    }


_BAR = '<rect class="bar" x="%.2f" y="%.2f" width="%.2f" height="%.2f"><title>%s to %s: %s tokens</title></rect>'


def histogram_markup(edges: list[float], counts: list[int], bands: list[dict[str, Any]]):
    """The histogram as an SVG element (escaped here: only numbers go in)."""
    from markupsafe import Markup

    from actscope.app.render import fmt, fmt_all

    h = histogram_svg(edges, counts, bands)
    out = [
        f'<svg viewBox="0 0 {h["width"]} {h["height"]}" role="img" '
        'aria-label="Histogram of activations (log count), band edges marked">'
    ]
    b = h["bars"]
    if b:
        # All bars in one % format: one <rect> per bar with its range and count.
        labels = fmt_all(edges)
        n = len(counts)
        cells: list[Any] = [None] * (7 * n)
        cells[0::7], cells[1::7], cells[2::7], cells[3::7] = b["x"][:n], b["y"], b["w"][:n], b["h"]
        cells[4::7], cells[5::7], cells[6::7] = labels[:n], labels[1 : n + 1], map("{:,}".format, counts)
        out.append(_BAR * n % tuple(cells))
    for m in h["marks"]:
        out.append(
            f'<line class="band-mark" x1="{m["x"]}" x2="{m["x"]}" y1="{h["top"] - 2}" y2="{h["baseline"]}">'
            f"<title>band {m['band']} starts at {fmt(m['value'])}</title></line>"
        )
        if m["label"]:
            out.append(
                f'<text class="band-label" x="{m["label_x"]}" y="{m["label_y"]}" '
                f'text-anchor="{m["anchor"]}">B{m["band"]}</text>'
            )
    if "baseline" in h:
        out.append(f'<line class="axis" x1="0" x2="{h["width"]}" y1="{h["baseline"]}" y2="{h["baseline"]}"/>')
    for t in h["ticks"]:
        out.append(
            f'<text class="tick" x="{t["x"]}" y="{h["height"] - 6}" text-anchor="{t["anchor"]}">{t["label"]}</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))
