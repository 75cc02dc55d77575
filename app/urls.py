"""Every URL the app emits is built here (one place, like Datasette's url_builder).

A `URLs` builder is bound to the site's base path: the ASGI `root_path` of the request
("" at the root of a host, "/actscope" behind a proxy that serves the site under that
prefix and strips it). Page data, templates, redirects and headers all build their URLs
with the builder of the request they answer (`for_request`), so the prefix comes from
one place, the request's scope (which `actscope serve --root-path` sets).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any
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


def _with_query(path: str, params: Mapping[str, object] | None) -> str:
    if not params:
        return path
    query = "&".join(f"{_qv(k)}={_qv(v)}" for k, v in params.items() if v is not None and v != "")
    return f"{path}?{query}" if query else path


# The site's icon, inline: a browser never asks the host's root for /favicon.ico (outside
# the site when it is served under a prefix), and /docs needs no icon from the network.
FAVICON_SVG = "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'><rect width='16' height='16' rx='3' fill='#e8590c'/></svg>"
FAVICON = "data:image/svg+xml," + FAVICON_SVG.replace("<", "%3C").replace(">", "%3E").replace("#", "%23")


class URLs:
    """URLs of the site served under `base` ("" or a path such as "/actscope")."""

    __slots__ = ("base",)

    def __init__(self, base: str = "") -> None:
        self.base = base.rstrip("/")

    def __repr__(self) -> str:
        return f"URLs({self.base!r})"

    def site(self, path: str) -> str:
        """A path of the app as the app's routes see it ("/tiny/0-mlp"), as a URL."""
        return self.base + path

    def home(self) -> str:
        return self.base + "/"

    def static(self, name: str) -> str:
        return f"{self.base}/static/{name}"

    def favicon(self) -> str:
        return FAVICON

    def docs(self) -> str:
        return f"{self.base}/docs"

    def openapi(self) -> str:
        return f"{self.base}/openapi.json"

    def model(self, model: str) -> str:
        return f"{self.base}/{_q(model)}"

    def source(self, model: str, source: str, **params: object) -> str:
        return _with_query(f"{self.base}/{_q(model)}/{_q(source)}", params)

    def unit(self, model: str, source: str, index: int, **params: object) -> str:
        return _with_query(f"{self.base}/{_q(model)}/{_q(source)}/{int(index)}", params)

    def embed(self, model: str, source: str, index: int) -> str:
        """The unit's embed card (the one page other sites may frame)."""
        return f"{self.base}/embed/{_q(model)}/{_q(source)}/{int(index)}"

    def unit_opening(
        self, model: str, source: str, index: int, keys: list[str], name: str = "open", **params: object
    ) -> list[str]:
        """[unit(model, source, index, **params, open=key) for key in keys] (or another
        parameter `name`), the common part built once (a unit page links every example open)."""
        page = self.unit(model, source, index, **{k: v for k, v in params.items() if k != name})
        sep = "&" if "?" in page else "?"
        # A key is SEQ:POS: only its colon needs quoting (what _qv would write).
        return [
            f"{page}{sep}{name}={key.replace(':', '%3A') if key.replace(':', '').isdecimal() and key.isascii() else _qv(key)}"
            for key in keys
        ]

    def unit_live(self, model: str, source: str, index: int, **params: object) -> str:
        return _with_query(f"{self.base}/{_q(model)}/{_q(source)}/{int(index)}/live", params)

    def similar(self, model: str, source: str, index: int, **params: object) -> str:
        """The unit's neighbours (by fingerprint correlation)."""
        return _with_query(f"{self.base}/{_q(model)}/{_q(source)}/{int(index)}/similar", params)

    def reservoir(self, model: str) -> str:
        """The positions a model's fingerprints are taken at (JSON only)."""
        return f"{self.base}/api/{_q(model)}/reservoir"

    def unit_hypothesis(self, model: str, source: str, index: int, **params: object) -> str:
        """A unit's regex hypothesis test (regex, threshold, sequences, seed)."""
        return _with_query(f"{self.base}/{_q(model)}/{_q(source)}/{int(index)}/hypothesis", params)

    def explain(self, model: str, source: str, index: int, **params: object) -> str:
        """What mattered at an example's focus (seq, pos) or a text's, and its minimal example."""
        return _with_query(f"{self.base}/{_q(model)}/{_q(source)}/{int(index)}/explain", params)

    def minimal(self, model: str, source: str, index: int, **params: object) -> str:
        """The minimal examples of a unit's top examples, summed up."""
        return _with_query(f"{self.base}/{_q(model)}/{_q(source)}/{int(index)}/minimal", params)

    def random_unit(self, model: str, source: str, **params: object) -> str:
        return _with_query(f"{self.base}/{_q(model)}/{_q(source)}/random", params)

    def sequence(self, model: str, seq: int, **params: object) -> str:
        return _with_query(f"{self.base}/{_q(model)}/sequences/{int(seq)}", params)

    def sequences(self, model: str, source: str, index: int, seq_pos: list[tuple[int, int]]) -> list[str]:
        """[sequence(model, seq, source=source, index=index, pos=pos) for seq, pos in seq_pos],
        the common parts quoted once (a unit page links every example's sequence)."""
        head = f"{self.base}/{_q(model)}/sequences/"
        query = f"?source={_qv(source)}&index={int(index)}&pos="
        return [f"{head}{int(seq)}{query}{int(pos)}" for seq, pos in seq_pos]

    def try_page(self, model: str, **params: object) -> str:
        return _with_query(f"{self.base}/{_q(model)}/try", params)

    def search(self, model: str, **params: object) -> str:
        return _with_query(f"{self.base}/{_q(model)}/search", params)

    def compare(self, model: str, units: str | None = None) -> str:
        """The compare view of `units` ("1-mlp/5,1-mlp-pre/5"): its commas, slashes and
        colons stay as typed, so the URL reads like the list."""
        path = f"{self.base}/{_q(model)}/compare"
        return f"{path}?units={quote(units, safe='/,:')}" if units else path

    def export(self, model: str, source: str, fmt: str) -> str:
        return f"{self.base}/api/{_q(model)}/{_q(source)}/export.{fmt}"

    def api(self, page_url: str) -> str:
        """The JSON twin of a page URL built by this builder: the same path and query
        under /api."""
        path = page_url[len(self.base) :] if self.base and page_url.startswith(self.base) else page_url
        return f"{self.base}/api" if path in ("", "/") else f"{self.base}/api{path}"


ROOT = URLs("")


@lru_cache(maxsize=64)
def for_base(base: str) -> URLs:
    """The (shared) builder of a base path."""
    return URLs(base) if base.rstrip("/") else ROOT


def base_path(scope: Mapping[str, Any]) -> str:
    """The site's base path of a request: its ASGI root_path (that of the app, also
    inside a mounted sub-app such as /static)."""
    if "app_root_path" in scope:
        return scope["app_root_path"]
    return scope.get("root_path", "")


def for_request(request: Any) -> URLs:
    """The builder of the site as `request` reached it."""
    return for_base(base_path(request.scope))


def route_path(scope: Mapping[str, Any]) -> str:
    """The request's path as the app's routes see it: without the base path. (Servers
    differ: uvicorn puts the root_path in front of `path`, Starlette's TestClient does
    not; the router accepts both, so does this.)"""
    path: str = scope["path"]
    base = base_path(scope).rstrip("/")
    if base and path.startswith(base) and (len(path) == len(base) or path[len(base)] == "/"):
        return path[len(base) :] or "/"
    return path
