"""Every URL the app links to is built here (one place, like Datasette's url_builder)."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import quote, quote_plus


@lru_cache(maxsize=4096)  # model and source names repeat in every link of a page
def _q(part: object) -> str:
    return quote(str(part), safe="")


@lru_cache(maxsize=4096)
def _quote_short(text: str) -> str:
    return quote_plus(text)


def _qv(value: object) -> str:
    # Exactly what urlencode writes, without its generic machinery: a unit page
    # builds ~30 links and urlencode was a tenth of its rendering time. Short strings
    # (parameter names, source slugs) repeat in every link, so their quoting is cached.
    if type(value) is int:
        return str(value)
    text = str(value)
    return _quote_short(text) if len(text) <= 64 else quote_plus(text)


def _with_query(path: str, params: dict[str, object] | None) -> str:
    if not params:
        return path
    query = "&".join(f"{_qv(k)}={_qv(v)}" for k, v in params.items() if v is not None and v != "")
    return f"{path}?{query}" if query else path


def home() -> str:
    return "/"


def model(model: str) -> str:
    return f"/{_q(model)}"


def source(model: str, source: str, **params: object) -> str:
    return _with_query(f"/{_q(model)}/{_q(source)}", params)


def unit(model: str, source: str, index: int, **params: object) -> str:
    return _with_query(f"/{_q(model)}/{_q(source)}/{int(index)}", params)


def unit_live(model: str, source: str, index: int, **params: object) -> str:
    return _with_query(f"/{_q(model)}/{_q(source)}/{int(index)}/live", params)


def random_unit(model: str, source: str) -> str:
    return f"/{_q(model)}/{_q(source)}/random"


def sequence(model: str, seq: int, **params: object) -> str:
    return _with_query(f"/{_q(model)}/sequences/{int(seq)}", params)


def sequences(model: str, source: str, index: int, seq_pos: list[tuple[int, int]]) -> list[str]:
    """[sequence(model, seq, source=source, index=index, pos=pos) for seq, pos in seq_pos],
    the common parts quoted once (a unit page links every example's sequence)."""
    head = f"/{_q(model)}/sequences/"
    query = f"?source={_qv(source)}&index={int(index)}&pos="
    return [f"{head}{int(seq)}{query}{int(pos)}" for seq, pos in seq_pos]


def try_page(model: str, **params: object) -> str:
    return _with_query(f"/{_q(model)}/try", params)


def search(model: str, **params: object) -> str:
    return _with_query(f"/{_q(model)}/search", params)


def export(model: str, source: str, fmt: str) -> str:
    return f"/api/{_q(model)}/{_q(source)}/export.{fmt}"


def api(html_url: str) -> str:
    """The JSON twin of a page URL: the same path and query under /api."""
    return "/api" if html_url in ("", "/") else "/api" + html_url
