"""WCAG contrast of a rendered element's text against what is painted behind it, from
the page's computed styles (colour-mix and alpha resolved by the browser)."""

from __future__ import annotations

import re

# The element's colour and the first opaque background behind it, composited.
_COLORS_JS = """el => {
  const parse = s => {
    const n = (s.match(/[\\d.]+/g) || []).map(Number);
    // color-mix() computes to color(srgb r g b / a) with channels in 0..1
    return s.startsWith("color(") ? [n[0] * 255, n[1] * 255, n[2] * 255, n.length > 3 ? n[3] : 1] : n;
  };
  const over = (top, under) => {
    const a = top.length > 3 ? top[3] : 1;
    return [0, 1, 2].map(i => top[i] * a + under[i] * (1 - a));
  };
  const layers = [];
  for (let node = el; node; node = node.parentElement) {
    const bg = parse(getComputedStyle(node).backgroundColor);
    if (bg.length && (bg.length < 4 || bg[3] > 0)) layers.push(bg);
    if (bg.length && (bg.length < 4 || bg[3] >= 1)) break;
  }
  let painted = [255, 255, 255];
  for (const layer of layers.reverse()) painted = over(layer, painted);
  return {fg: over(parse(getComputedStyle(el).color), painted), bg: painted};
}"""


def luminance(rgb: list[float]) -> float:
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def ratio(fg: list[float], bg: list[float]) -> float:
    hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def contrast_of(locator) -> float:
    colors = locator.evaluate(_COLORS_JS)
    return ratio(colors["fg"], colors["bg"])


def parse_rgb(css: str) -> list[float]:
    return [float(x) for x in re.findall(r"[\d.]+", css)]
