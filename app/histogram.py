"""Geometry of a unit's activation histogram, drawn as SVG by the unit template."""

from __future__ import annotations

import math
from typing import Any

WIDTH, HEIGHT, PAD_X, PAD_TOP, PAD_BOTTOM = 600, 150, 8, 10, 22


def histogram_svg(edges: list[float], counts: list[int], bands: list[dict[str, Any]]) -> dict[str, Any]:
    """Bars (log-scaled counts) and band edge markers in SVG user units."""
    if len(edges) < 2 or not counts:
        return {"width": WIDTH, "height": HEIGHT, "bars": [], "marks": [], "ticks": []}
    lo, hi = edges[0], edges[-1]
    span = (hi - lo) or 1.0
    plot_w = WIDTH - 2 * PAD_X
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    top = max(math.log1p(c) for c in counts) or 1.0

    def x(v: float) -> float:
        return PAD_X + (v - lo) / span * plot_w

    # Bars as columns (x, y, width, height), one value per bar.
    xs = [x(v) for v in edges]
    hs = [math.log1p(c) / top * plot_h for c in counts]
    bars = {
        "x": xs[:-1],
        "y": [PAD_TOP + plot_h - h for h in hs],
        "w": [max(x1 - x0 - 0.5, 0.5) for x0, x1 in zip(xs, xs[1:])],
        "h": hs,
    }
    marks = []
    last_label = -1e9
    for b in bands:
        v = b["lo"]
        if lo < v < hi:
            mx = round(x(v), 2)
            label = mx - last_label >= 16  # labels of edges closer than this would overlap
            if label:
                last_label = mx
            marks.append({"x": mx, "band": b["band"], "value": v, "label": label})
    # (x, value, text-anchor) of the axis labels
    at = [
        (round(x(v), 2), v, anchor)
        for v, anchor in ((lo, "start"), (0.0, "middle"), (hi, "end"))
        if lo <= v <= hi and (v == 0.0 or abs(v) > 0.08 * span or v in (lo, hi))
    ]
    # Keep 0 only when it is not crowding an end label.
    if len(at) == 3 and min(at[1][0] - at[0][0], at[2][0] - at[1][0]) < 40:
        at.pop(1)
    ticks = [{"x": tx, "label": f"{v:.3g}", "anchor": anchor} for tx, v, anchor in at]
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "bars": bars,
        "marks": marks,
        "ticks": ticks,
        "baseline": PAD_TOP + plot_h,
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
        ns = [f"{c:,}" for c in counts]
        cells = [v for bar in zip(b["x"], b["y"], b["w"], b["h"], labels, labels[1:], ns) for v in bar]
        out.append(_BAR * len(counts) % tuple(cells))
    for m in h["marks"]:
        out.append(
            f'<line class="band-mark" x1="{m["x"]}" x2="{m["x"]}" y1="4" y2="{h["baseline"]}">'
            f"<title>band {m['band']} starts at {fmt(m['value'])}</title></line>"
        )
        if m["label"]:
            out.append(f'<text class="band-label" x="{m["x"] + 2}" y="12">B{m["band"]}</text>')
    if "baseline" in h:
        out.append(f'<line class="axis" x1="0" x2="{h["width"]}" y1="{h["baseline"]}" y2="{h["baseline"]}"/>')
    for t in h["ticks"]:
        out.append(
            f'<text class="tick" x="{t["x"]}" y="{h["height"] - 6}" text-anchor="{t["anchor"]}">{t["label"]}</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))
