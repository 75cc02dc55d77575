"""Templates (Jinja2 with block rendering for htmx fragments) and their helpers."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jinja2
from jinja2_fragments.fastapi import Jinja2Blocks
from markupsafe import Markup, escape
from starlette.requests import Request

from actscope.app import urls as site_urls
from actscope.app.histogram import histogram_markup
from actscope.app.resources import resource_dir
from actscope.app.urls import URLs


def tint(act: float, scale: float) -> str:
    """Inline style for a token: --a is the strength 0..1 of the unit's colour."""
    a = min(abs(act) / scale, 1.0) if scale > 0 else 0.0
    return f"--a:{a:.3f}"


def ascii_html(text: str) -> Markup:
    """`text` escaped, with every non-ASCII character as a character reference: the
    browser shows the same text, and a page that is all ASCII is joined and encoded
    by Python several times faster (a unit page: 2 us instead of 70 to encode)."""
    return Markup(str(escape(text)).encode("ascii", "xmlcharrefreplace").decode("ascii"))


@lru_cache(maxsize=65536)
def repr_token(tok: str) -> Markup:
    """A token as a quoted string (JSON), escaped for HTML and ASCII."""
    return ascii_html(json.dumps(tok, ensure_ascii=False))


# Tint strengths 0.000..1.000 by thousandths: a list index instead of a float format
# per token.
_TINT = tuple(f"{i / 1000:.3f}" for i in range(1001))
# The opening of a token span by tint strength, positive and negative values.
_OPEN = tuple(f'<span class="t" style="--a:{t}' for t in _TINT)
_OPEN_NEG = tuple(f'<span class="t neg" style="--a:{t}' for t in _TINT)
# token -> the two constant pieces of its span (escaped label, escaped text shown).
# Bounded by the vocabularies served, so a plain dict; the cap only guards odd input.
_PIECES: dict[str, tuple[str, str]] = {}


def _token_pieces(tok: str) -> tuple[str, str]:
    pieces = _PIECES.get(tok)
    if pieces is None:
        # Newline and tab marks as character references, like every non-ASCII character.
        shown = str(ascii_html(tok)).replace("\n", "&#8629;\n").replace("\t", "&#8677;\t")
        pieces = (f'" tabindex="0" title="{repr_token(tok)}: ', f'">{shown}</span>')
        if len(_PIECES) < 1_000_000:
            _PIECES[tok] = pieces
    return pieces


def prepare_tokens(vocab: list[str]) -> None:
    """Build the span pieces of a whole vocabulary once (a few ms per 10k tokens), so
    no page pays for escaping a token it is the first to show."""
    for tok in vocab:
        _token_pieces(tok)


def _span(cls: str, a: float, tok: str, act: float) -> str:
    """One token span; `a` is the tint strength in thousandths (clipped to 1000)."""
    before, after = _token_pieces(tok)
    value = f"{act:.4f}"
    return (
        f'<span class="{cls}" style="--a:{_TINT[int(a + 0.5)] if a < 999.5 else "1.000"}'
        f'{before}{value}" data-act="{value}{after}'
    )


def tokens_html(
    toks: list[str], acts: list[float], scale: float, focus: int | None = None, bos: bool = False
) -> Markup:
    """Tinted token spans (the hot loop of every page, so built here, escaped here).

    Each span: class t (+ neg for negative values, + focus), --a = |act| / scale,
    title `"<token>": <act>` for hover without JS, data-act for the tooltip and tests.
    With `bos`, toks[0] is the BOS token: shown untinted (statistics never count it and
    its activation is often off the scale), its value still in the title.
    """
    out: list[str] = []
    _append_spans(out, toks, acts, scale, focus, bos)
    return Markup("".join(out))


def _append_spans(
    out: list[str], toks: list[str], acts: list[float], scale: float, focus: int | None, bos: bool
) -> None:
    """tokens_html() into `out`, so a list of examples is joined (copied) only once."""
    inv = 1000.0 / scale if scale > 0 else 0.0
    pos, neg, pieces = _OPEN, _OPEN_NEG, _PIECES
    first = len(out) + 1  # where the span of toks[0] goes
    append = out.append
    append('<span class="toks">')
    n = min(len(toks), len(acts))
    # All values in one % format (half the cost of one f-string per token).
    values = ("%.4f\n" * n % tuple(acts[:n])).split("\n")
    # The same span as _span(), inlined: hundreds of tokens per unit page. `a` is the tint
    # strength in thousandths + 0.5 (rounding); NaN and inf fall to full strength.
    for tok, act, value in zip(toks, acts, values):
        before, after = pieces.get(tok) or _token_pieces(tok)
        if act < 0:
            a = 0.5 - act * inv
            head = neg[int(a)] if a < 1000 else neg[1000]
        else:
            a = act * inv + 0.5
            head = pos[int(a)] if a < 1000 else pos[1000]
        append(f'{head}{before}{value}" data-act="{value}{after}')
    if focus is not None and 0 <= focus < n and not (bos and focus == 0):
        act = acts[focus]
        out[first + focus] = _span("t neg focus" if act < 0 else "t focus", abs(act) * inv, toks[focus], act)
    if bos and n:
        out[first] = _span("t bos focus" if focus == 0 else "t bos", 0.0, toks[0], acts[0])
    append("</span>")


def example_items(
    examples: list[dict[str, Any]],
    model: str,
    source: str,
    index: int,
    scale: float,
    *,
    urls: URLs = site_urls.ROOT,
    state: dict[str, Any] | None = None,
    open: dict[str, int] | None = None,
    full: Markup | str = "",
    first: int = 0,
) -> Markup:
    """The <li> of each example of a unit page: focus activation, tinted tokens, and a
    link that shows or hides its full sequence in the item. The link is the unit page
    with the example open (`open=SEQ:POS`, plus the page's `state`: band, page, text),
    or without it when it is the `open` one, whose item holds `full`; app.js toggles
    it in place instead, loading the sequence's block (data-seq). `first`: the number of the first item on the
    page. Built here rather than in the template: a Jinja loop cost more than the token
    spans themselves."""
    if not examples:
        return Markup('<li class="empty">No examples in this set.</li>')
    state = {k: v for k, v in (state or {}).items() if k != "open"}
    closed = escape(urls.unit(model, source, index, **state))
    out: list[str] = []
    links = urls.sequences(model, source, index, [(ex["seq"], ex["pos"]) for ex in examples])
    for i, (ex, link) in enumerate(zip(examples, links), start=first):
        is_open = open is not None and (ex["seq"], ex["pos"]) == (open["seq"], open["pos"])
        out.append(
            f'<li class="example" id="ex-{i}">\n'
            f'<span class="ex-act" title="activation at the focus token">{fmt(ex["act"])}</span>\n'
        )
        _append_spans(out, ex["tokens"], ex["acts"], scale, ex["focus"], ex["start"] == 0)
        key = f"{ex['seq']}:{ex['pos']}"
        href = closed if is_open else escape(urls.unit(model, source, index, **state, open=key))
        out.append(
            f'\n<a class="full-link" href="{href}#ex-{i}" data-open="{key}" data-seq="{escape(link)}" '
            f'aria-controls="full-{i}" aria-expanded="{"true" if is_open else "false"}">'
            f"{'hide' if is_open else 'show'} full sequence</a>\n"
            f'<div class="full" id="full-{i}">{full if is_open else ""}</div>\n</li>\n'
        )
    return Markup("".join(out))


def logit_rows(logits: list[dict[str, Any]], cls: str) -> Markup:
    """Table rows of a unit's logit effects: token, signed value (a Jinja loop of
    20 rows cost a sixth of a unit page)."""
    return Markup(
        "".join(
            f'<tr><td><code class="tok">{repr_token(lg["token"])}</code></td>'
            f'<td class="num {cls}">{lg["value"]:+.3f}</td></tr>'
            for lg in logits
        )
    )


_TAB = (
    '<a class="{cls}"{current} href="{url}" hx-get="{url}" hx-target="#examples" hx-swap="outerHTML" '
    'hx-push-url="true" data-keep="text per_page"{title}><span class="tab-name">{name}</span>\n'
    '<span class="range">{range}</span>{share}</a>\n'
)


def example_tabs(d: dict[str, Any], *, urls: URLs = site_urls.ROOT) -> Markup:
    """The links to a unit page's example sets: Top, then every band that holds tokens
    from the highest (an empty band has no link; band numbers stay those of the index),
    each named by its quantile range and labelled with its activation range and share
    of tokens; each keeps the page's text and examples per page. Plain links (the current one aria-current) that htmx turns into a swap of
    #examples. (Built here for the same reason as example_items.)"""
    model, slug, index, text, current = d["model"], d["source"]["slug"], d["index"], d["text"], d["band"]
    per_page = d.get("params", {}).get("per_page")
    firing = d["source"]["band_basis"] == "firing"
    basis = "of active tokens" if firing else "of tokens"
    named = ' <span class="basis">of active tokens</span>' if firing else ""  # SAE bands: not of all tokens
    out = []
    if d["top"]:
        url = escape(urls.unit(model, slug, index, per_page=per_page, text=text))
        on = current == "top"
        out.append(
            _TAB.format(
                cls="tab active" if on else "tab",
                current=' aria-current="page"' if on else "",
                url=url,
                title=' title="the strongest activations in the corpus"',
                name=f"Top {len(d['top'])}",
                range=f"max {fmt(d['stats']['max'])}",
                share="",
            )
        )
    for b in reversed(d["bands"]):
        if b["count"] == 0:
            continue
        url = escape(urls.unit(model, slug, index, band=b["band"], per_page=per_page, text=text))
        on = current == str(b["band"])
        name = escape(b.get("name") or f"B{b['band']}")
        out.append(
            _TAB.format(
                cls="tab band-tab active" if on else "tab band-tab",
                current=' aria-current="page"' if on else "",
                url=url,
                title=f' title="band {b["band"]}: {name} {basis} (quantiles {fmt(b["q_lo"])}&ndash;{fmt(b["q_hi"])})"',
                name=f'{name}{named} <span class="band-no">B{b["band"]}</span>',
                range=f"{fmt(b['lo'])} to {fmt(b['hi'])}",
                share=f' <span class="share">{escape(pct(b["share"]))}<span class="share-words"> of all tokens</span></span>',
            )
        )
    return Markup("".join(out))


def show_token(tok: str) -> str:
    """A token's text as shown in running text (newlines visible)."""
    return tok.replace("\n", "\u21b5\n").replace("\t", "\u21e5\t")


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 10**-(digits) or abs(value) >= 10**6):
            return f"{value:.{digits}e}"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_all(values: list[float], digits: int = 3) -> list[str]:
    """[fmt(v) for v in values], in one % format when no value needs the exponent form."""
    small, big = 10.0**-digits, 10.0**6
    if all(type(v) is float and (v == 0 or small <= abs(v) < big) for v in values):
        return (f"%.{digits}f\n" * len(values) % tuple(values)).split("\n")[:-1]
    return [fmt(v, digits) for v in values]


def pct(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "\u2013"
    v = value * 100
    if 0 < v < 10**-digits:
        return f"<{10**-digits:g}%"
    return f"{v:.{digits}f}%"


class _Environment(jinja2.Environment):
    def getattr(self, obj: Any, attribute: str) -> Any:
        """Jinja's `x.name` tries getattr(x, "name") first, which raises (slowly) on every
        dict; page data are plain dicts, so look keys up first (hundreds per unit page)."""
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


def _site_urls(request: Request) -> dict[str, Any]:
    """Every template gets `urls`: the URL builder of the site as the request reached it."""
    return {"urls": site_urls.for_request(request)}


def make_templates() -> Jinja2Blocks:
    env = _Environment(loader=jinja2.FileSystemLoader(str(resource_dir("templates"))), autoescape=True)
    templates = Jinja2Blocks(env=env, context_processors=[_site_urls])
    env.globals.update(
        histogram_markup=histogram_markup,
        tint=tint,
        tokens_html=tokens_html,
        example_items=example_items,
        example_tabs=example_tabs,
        logit_rows=logit_rows,
    )
    env.filters.update(fmt=fmt, pct=pct, show_token=show_token, repr_token=repr_token, ascii_html=ascii_html)
    env.trim_blocks = True
    env.lstrip_blocks = True
    # Installed templates never change while the server runs: no stat() of every
    # template file on every render.
    env.auto_reload = False
    # The search box of every page, a global rather than imported by each page (an
    # import costs a set difference over all globals on every render).
    env.globals["search_form"] = env.get_template("_tokens.html").module.__dict__["search_form"]
    return templates
