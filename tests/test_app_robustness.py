"""Bad input never gives a 500: odd paths, numbers and queries, from memory and from SQL."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures_web import make_client

M = "tiny"


@pytest.fixture(scope="module", params=["memory", "sql"])
def any_client(request, web_index):
    with make_client(
        web_index, live=False, resident_mb=1024 if request.param == "memory" else 0, response_cache_mb=0
    ) as c:
        yield c


ODD = [
    "-1",
    "99999999999999999999999",
    "1e3",
    "0x10",
    "%20",
    "%00",
    "..",
    "%2e%2e",
    "NaN",
    "inf",
    "\u00e9",
    "\U0001f600",
    "a" * 3000,
    "%3Cscript%3E",
    "1;DROP TABLE units",
    "'",
    '"',
]


@pytest.mark.parametrize("odd", ODD)
def test_odd_path_parts(any_client, odd):
    for path in [
        f"/{odd}",
        f"/api/{odd}",
        f"/{M}/{odd}",
        f"/api/{M}/{odd}",
        f"/{M}/0-mlp/{odd}",
        f"/api/{M}/0-mlp/{odd}",
        f"/api/{M}/sequences/{odd}",
        f"/{M}/sequences/{odd}",
        f"/{M}/{odd}/0",
        f"/api/{M}/0-mlp?page={odd}",
        f"/api/{M}/0-mlp?sort={odd}",
        f"/api/{M}/0-mlp?min_density={odd}",
        f"/{M}/0-mlp/0?band={odd}",
        f"/api/{M}/search?token={odd}",
        f"/{M}/search?token={odd}&source={odd}",
        f"/{M}/0-mlp?q={odd}",
        f"/api/{M}/0-mlp/export.{odd}",
    ]:
        r = any_client.get(path)
        assert r.status_code < 500, (path, r.status_code, r.text[:200])
        if path.startswith("/api") and r.status_code >= 400:
            assert r.json()["error"]["status"] == r.status_code


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    index=st.integers(min_value=-(2**70), max_value=2**70),
    seq=st.integers(min_value=-(2**70), max_value=2**70),
    page=st.integers(min_value=-(2**40), max_value=2**40),
    q=st.text(max_size=30),
)
def test_random_numbers_and_queries(any_client, index, seq, page, q):
    for path, params in [
        (f"/api/{M}/0-mlp/{index}", None),
        (f"/{M}/1-res-sae/{index}", None),
        (f"/api/{M}/sequences/{seq}", None),
        (f"/api/{M}/0-mlp", {"page": page, "q": q}),
        (f"/api/{M}/search", {"token": q}),
    ]:
        r = any_client.get(path, params=params)
        assert r.status_code < 500, (path, params, r.status_code, r.text[:200])
