"""HEAD answers as GET on every route of the route table; integers at 2^63 and beyond
answer 404/422, never 500; the schema's constraints agree with the server (issue 20)."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute

M, S = "tiny", "0-mlp"
# A value for each path parameter of the route table.
PATH_VALUES = {"model": M, "source": S, "index": "0", "seq": "0", "fmt": "jsonl"}


def _get_paths() -> list[str]:
    """Every GET route of the app's routers, with its path parameters filled in."""
    from actscope.app import routes_api, routes_html

    paths = ["/docs", "/favicon.ico", "/openapi.json", "/static/style.css"]
    for route in [*routes_api.router.routes, *routes_html.router.routes]:
        if isinstance(route, APIRoute) and "GET" in route.methods:
            paths.append(re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], route.path))
    return paths


def test_head_answers_as_get_on_every_route(client):
    paths = _get_paths()
    assert len(paths) >= 20 and f"/api/{M}/{S}/export.jsonl" in paths and f"/{M}/{S}/0" in paths
    for path in paths:
        get = client.get(path, follow_redirects=False)
        head = client.head(path, follow_redirects=False)
        assert head.status_code == get.status_code != 405, path
        assert head.content == b"", path
        for name in ("content-type", "content-length", "location", "content-disposition"):
            if name in ("location", "content-length") and get.status_code == 302:
                continue  # a random unit: another pick each time
            assert head.headers.get(name) == get.headers.get(name), (path, name)


BIG = [2**63 - 1, 2**63, 2**64, 10**30]


def _int_urls(n: int) -> list[str]:
    """Every integer a visitor can put in a URL or the activations body, set to n."""
    return [
        f"/api/{M}/sequences/{n}",
        f"/{M}/sequences/{n}",
        f"/api/{M}/{S}/{n}",
        f"/{M}/{S}/{n}",
        f"/{M}/{S}/{n}/live",
        f"/api/{M}/{S}?page={n}",
        f"/{M}/{S}?page={n}",
        f"/api/{M}/{S}?per_page={n}",
        f"/{M}/{S}?per_page={n}",
        f"/{M}/{S}?goto={n}",
        f"/api/{M}/search?token=a&page={n}",
        f"/api/{M}/search?page={n}",
        f"/{M}/search?token=a&page={n}",
        f"/api/{M}/search?token=a&per_page={n}",
        f"/api/{M}/try?text=hi&pos={n}",
        f"/{M}/try?text=hi&pos={n}",
        f"/api/{M}/try?text=hi&k={n}",
        f"/{M}/try?text=hi&k={n}",
        f"/api/{M}/{S}/0?page={n}",
        f"/{M}/{S}/0?page={n}",
        f"/api/{M}/{S}/0?per_page={n}",
        f"/api/{M}/{S}/0?band={n}",
        f"/{M}/{S}/0?band={n}",
        f"/api/{M}/{S}/0?open={n}:0",
        f"/api/{M}/{S}/0?open=0:{n}",
        f"/{M}/{S}/0?open={n}:{n}",
        f"/{M}/{S}/0?goto={n}",
        f"/{M}/sequences/0?source={S}&index={n}",
        f"/{M}/sequences/0?source={S}&index=0&pos={n}",
    ]


@pytest.mark.parametrize("n", BIG)
def test_huge_integers_are_404_or_422(client, n):
    for url in _int_urls(n):
        r = client.get(url)  # the live block's URL redirects a plain visit to the unit page
        assert r.status_code in (404, 422), (url, r.status_code, r.text[:200])
        if url.startswith("/api/"):
            assert r.json()["error"]["status"] == r.status_code, url
    for body in ({"text": "hi", "source": S, "index": n}, {"text": "hi", "source": S, "k": n}):
        r = client.post(f"/api/{M}/activations", json=body)
        assert r.status_code in (404, 422) and r.json()["error"]["status"] == r.status_code, (body, r.text[:200])


def test_the_text_pattern_names_python_whitespace():
    """The schema's text pattern refuses exactly the texts the server refuses as empty."""
    import re as regex

    from actscope.app import params

    assert set(params._SPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}
    pattern = regex.compile(params.TEXT_SCHEMA["pattern"])
    for text in ["a", " a ", "\ufeff", "\x00", "\u200b"]:
        assert pattern.search(text) and text.strip()
    for text in [" ", "\n\t", "\x1c\x85\u3000"]:
        assert not pattern.search(text) and not text.strip()


def _operation(doc: dict, path: str, method: str = "get") -> dict:
    return doc["paths"][path][method]


def _param(op: dict, name: str) -> dict:
    return next(p["schema"] for p in op["parameters"] if p["name"] == name)


def test_every_json_200_is_its_schema_and_every_error_the_one_shape(client):
    doc = client.get("/openapi.json").json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if status.startswith("2") and schema is not None:
                    assert "type" not in schema and ("$ref" in schema or "anyOf" in schema), (path, status, schema)
                if status.startswith(("4", "5")):
                    assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (path, status)
    assert "400" in _operation(doc, "/api/{model}/activations", "post")["responses"]
    random = _operation(doc, "/api/{model}/{source}/random")["responses"]["302"]
    assert random["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/RandomOut"}


def test_schema_and_server_agree_on_empty_text_and_zero_densities(client):
    doc = client.get("/openapi.json").json()
    table = _operation(doc, "/api/{model}/{source}")
    # Densities: 0 to 1, or empty for no bound; 0 and 0 keeps the dead units only.
    for name in ("min_density", "max_density"):
        assert {"type": "number", "minimum": 0, "maximum": 1} in _param(table, name)["anyOf"]
        assert {"type": "string", "maxLength": 0} in _param(table, name)["anyOf"]
    r = client.get(f"/api/{M}/{S}", params={"min_density": 0, "max_density": 0, "hide_dead": "false"})
    assert r.status_code == 200 and all(u["density"] == 0 for u in r.json()["units"])
    assert client.get(f"/api/{M}/{S}", params={"min_density": "", "max_density": ""}).status_code == 200
    # Text: the schema refuses "", as the server does.
    assert _param(_operation(doc, "/api/{model}/try"), "text")["minLength"] == 1
    assert client.get(f"/api/{M}/try", params={"text": ""}).status_code == 422
    # sort and order: enums.
    assert set(_param(table, "order")["enum"]) == {"asc", "desc"} and "max" in _param(table, "sort")["enum"]
