"""Templates (Jinja2 with block rendering for htmx fragments) and their helpers."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from itertools import count
from typing import Any

import jinja2
from jinja2_fragments.fastapi import Jinja2Blocks
from markupsafe import Markup, escape
from starlette.requests import Request

from actscope.app import urls as site_urls
from actscope.app.explain_state import kept
from actscope.app.histogram import histogram_markup
from actscope.app.resources import resource_dir
from actscope.app.token_html import TokenTable, Window, append_spans, ascii_html, tokens_html, windows_html
from actscope.app.unit_view import basis_words
from actscope.app.urls import URLs


def tint(act: float, scale: float) -> str:
    """Inline style for a token: --a is the strength 0..1 of the unit's colour."""
    a = min(abs(act) / scale, 1.0) if scale > 0 else 0.0
    return f"--a:{a:.3f}"


def example_items(
    table: TokenTable,
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
    explain: dict[str, Any] | None = None,
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
    # "what mattered": each example's attribution (`explain=SEQ:POS`), loaded by htmx.
    why = _why_links(urls, model, source, index, examples, state, explain)
    state = {k: v for k, v in (state or {}).items() if k != "open"}
    closed = escape(urls.unit(model, source, index, **state))
    keys = [f"{ex['seq']}:{ex['pos']}" for ex in examples]
    opens = urls.unit_opening(model, source, index, keys, **state)
    links = urls.sequences(model, source, index, [(ex["seq"], ex["pos"]) for ex in examples])
    # A head's examples are tinted by attention instead (append_attention below).
    plain = [ex for ex in examples if ex.get("attention") is None]
    windows = [Window(ex["token_ids"], ex["acts"], ex["focus"], ex["start"] == 0) for ex in plain]
    plain_spans = iter(windows_html(table, windows, scale))
    spans = [next(plain_spans) if ex.get("attention") is None else "" for ex in examples]
    out: list[str] = []
    for i, ex, key, href, link, tokens in zip(count(first), examples, keys, opens, links, spans):
        is_open = open is not None and (ex["seq"], ex["pos"]) == (open["seq"], open["pos"])
        out.append(
            f'<li class="example" id="ex-{i}">\n'
            f'<span class="ex-act" title="activation at the focus token">{fmt(ex["act"])}</span>\n'
        )
        attention = ex.get("attention")
        if attention is None:
            out.append(tokens)
        else:
            append_attention(out, table, ex, attention, link)
        out.append(
            f'\n<a class="full-link" href="{closed if is_open else escape(href)}#ex-{i}" data-open="{key}" '
            f'data-seq="{escape(link)}" aria-controls="full-{i}" aria-expanded="{"true" if is_open else "false"}">'
            f"{'hide' if is_open else 'show'} full sequence</a>\n"
            f"{why[i - first]}"
            f'<div class="full" id="full-{i}">{full if is_open else ""}</div>\n</li>\n'
        )
    return Markup("".join(out))


def _why_links(
    urls: URLs,
    model: str,
    source: str,
    index: int,
    examples: list[dict[str, Any]],
    state: dict[str, Any] | None,
    explain: dict[str, Any] | None,
) -> list[str]:
    """Per example: its "what mattered" link (the unit page with `explain=SEQ:POS`, or
    without it for the example explained), and for that example the box its attribution
    loads into after the page (htmx; without JavaScript, a link to it)."""
    state = {k: v for k, v in (state or {}).items() if k != "explain"}
    keys = [f"{ex['seq']}:{ex['pos']}" for ex in examples]
    hrefs = urls.unit_opening(model, source, index, keys, name="explain", **state)
    shown = explain["key"] if explain is not None and explain["seq"] is not None else None
    closed = escape(urls.unit(model, source, index, **state))
    out = []
    for key, href in zip(keys, hrefs):
        if key != shown:
            out.append(f'<a class="why-link" href="{escape(href)}" data-keep="open">what mattered</a>\n')
            continue
        url = escape(explain["url"])  # type: ignore[index]
        out.append(
            f'<a class="why-link" href="{closed}" data-keep="open" aria-expanded="true">hide what mattered</a>\n'
            f'<div class="why" hx-get="{url}" hx-trigger="load" hx-swap="innerHTML">'
            f'<a class="why-page" href="{url}">see what mattered (computed on request)</a></div>\n'
        )
    return out


def attention_tokens(table: TokenTable, ids: list[int], attention: dict[str, Any], focus: int) -> Markup:
    """A whole sequence tinted by where its focus token attends (see append_attention)."""
    out: list[str] = []
    append_attention(out, table, {"token_ids": ids, "focus": focus, "start": 0}, attention, "")
    return Markup("".join(out))


def append_attention(
    out: list[str], table: TokenTable, ex: dict[str, Any], attention: dict[str, Any], link: str
) -> None:
    """An attention head's example into `out`: the window tinted by where the focus token
    attends (A[focus, s], full colour at 1), its strongest source other than BOS outlined
    and named below, with its position and a link to the sequence when it lies outside
    the window."""
    first = len(out) + 1
    append_spans(out, table, ex["token_ids"], attention["weights"], 1.0, ex["focus"], ex["start"] == 0)
    top = attention["strongest"]
    k = top["pos"] - ex["start"]
    if top["in_window"] and out[first + k].startswith('<span class="t'):
        out[first + k] = out[first + k].replace('<span class="t', '<span class="t attn-src', 1)
    where = (
        f"position {top['pos']}"
        if not link  # a whole sequence: every source is in it
        else f"position {top['pos']}, in the window"
        if top["in_window"]
        else f'position {top["pos"]}, outside the window: <a class="attn-seq" href="{escape(link)}">see the full sequence</a>'
    )
    out.append(
        f'\n<span class="attn-note small">attends most to {table.code(top["token_id"])} '
        f'(<span class="attn-weight">{top["weight"]:.3f}</span>, {where}); BOS {attention["bos"]:.3f}</span>'
    )


def logit_rows(table: TokenTable, logits: list[dict[str, Any]], cls: str) -> Markup:
    """Table rows of a unit's logit effects: token (its id on hover), signed value (a
    Jinja loop of 20 rows cost a sixth of a unit page)."""
    return Markup(
        "".join(
            f'<tr><td>{table.code(lg["token_id"])}</td><td class="num {cls}">{lg["value"]:+.3f}</td></tr>'
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
    of tokens; each keeps the page's text, examples per page and the explanation that
    still applies (explain_state.kept). Plain links (the current one aria-current) that htmx turns into a swap of
    #examples. (Built here for the same reason as example_items.)"""
    model, slug, index, text, current = d["model"], d["source"]["slug"], d["index"], d["text"], d["band"]
    per_page = d.get("params", {}).get("per_page")
    explain = d.get("explain")
    firing = d["source"]["band_basis"] == "firing"
    basis = basis_words(d["source"]["band_basis"])
    named = f' <span class="basis">{basis}</span>' if firing else ""  # SAE bands: not of all tokens
    out = []
    if d["top"]:
        url = escape(urls.unit(model, slug, index, per_page=per_page, text=text, explain=kept(explain, True)))
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
        url = escape(
            urls.unit(model, slug, index, band=b["band"], per_page=per_page, text=text, explain=kept(explain, False))
        )
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


def snippet_html(table: TokenTable, snippet: dict[str, Any]) -> Markup:
    """A search hit's snippet (search_data.snippet) as tinted tokens, on the scale of its
    largest activation, its first token untinted if it is the sequence's BOS."""
    acts = snippet["acts"]
    scale = max(map(abs, acts), default=0.0) or 1.0
    return tokens_html(table, snippet["token_ids"], acts, scale, snippet["focus"], snippet["start"] == 0)


@lru_cache(maxsize=65536)
def repr_token(tok: str) -> Markup:
    """Text (e.g. a token typed in a search box) as a quoted string (JSON), escaped for
    HTML and ASCII. Tokens of a vocabulary are shown by token_code() instead."""
    return ascii_html(json.dumps(tok, ensure_ascii=False))


def show_token(tok: str) -> str:
    """Text as shown in running text (newlines visible)."""
    return tok.replace("\n", "\u21b5\n").replace("\t", "\u21e5\t")


def fmt(value: Any, digits: int = 3) -> str:
    if type(value) is float and digits == 3 and (value == 0 or 1e-3 <= abs(value) < 1e6):
        return f"{value:.3f}"  # the common case, without the general checks (called ~60 times a page)
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


def page_bytes(template: jinja2.Template, context: dict[str, Any]) -> bytes:
    """A page rendered to UTF-8 piece by piece: joined first, a single non-ASCII
    character (an en dash) would make the whole page a two-byte string, whose encoding
    took a tenth of a unit page; the pieces that are ASCII encode as a copy."""
    return b"".join([piece.encode() for piece in template.generate(context)])


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


def make_templates(token_tables: dict[str, TokenTable]) -> Jinja2Blocks:
    """The templates of one app; `token_tables` shows the tokens of each model served."""
    env = _Environment(loader=jinja2.FileSystemLoader(str(resource_dir("templates"))), autoescape=True)
    templates = Jinja2Blocks(env=env, context_processors=[_site_urls])

    def table(model: str) -> TokenTable:
        found = token_tables.get(model)
        return found if found is not None else TokenTable([])

    env.globals.update(
        histogram_markup=histogram_markup,
        tint=tint,
        # Token rendering takes the model first: its vocabulary says how each token shows.
        tokens_html=lambda model, *a, **k: tokens_html(table(model), *a, **k),
        example_items=lambda examples, model, *a, **k: example_items(table(model), examples, model, *a, **k),
        logit_rows=lambda model, *a: logit_rows(table(model), *a),
        attention_tokens=lambda model, *a: attention_tokens(table(model), *a),
        snippet_html=lambda model, snippet: snippet_html(table(model), snippet),
        token_code=lambda model, token_id: table(model).code(token_id),
        token_title=lambda model, token_id: Markup(table(model).title(token_id)),
        # A token's box, and what follows it (a newline's line break): outside the box.
        token_box=lambda model, token_id: Markup(table(model).shown_html(token_id)[0]),
        token_after=lambda model, token_id: Markup(table(model).shown_html(token_id)[1]),
        example_tabs=example_tabs,
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
    form = env.get_template("_hypothesis.html").module.__dict__["hypothesis_form"]
    env.globals["hypothesis_form"] = form
    env.globals["unit_hypothesis_form"] = _filled_in(str(form(_ACTION)), _ACTION)
    return templates


# Where the action URL goes in the unit page's hypothesis form, rendered once.
_ACTION = "ACTSCOPE-ACTION-URL"


def _filled_in(html: str, hole: str) -> Callable[[str], Markup]:
    """A fragment rendered once with `hole` in the place of one value, as a function of
    that value (escaped): a unit page's hypothesis form without a macro call per page."""
    head, found, tail = html.partition(hole)
    if not found or hole in tail:
        raise ValueError(f"the fragment must hold {hole!r} exactly once")
    return lambda value: Markup(head + str(escape(value)) + tail)
