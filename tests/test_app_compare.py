"""The compare view and a neuron's other hooks, over a tiny SoLU model indexed at
hook_pre, hook_mid and hook_post (plus random directions), served in one file with the
tiny GELU model: the figures against the index's own tables and TransformerLens."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from bs4 import BeautifulSoup

from fixtures_web import make_client

SOLU = "solu-tiny"
HOOKS_OF_5 = "1-mlp-pre/5,1-mlp-mid/5,1-mlp/5"


@pytest.fixture(scope="module")
def client(solu_served_index):
    with make_client(solu_served_index) as c:
        yield c


@pytest.fixture(scope="module")
def con(solu_served_index):
    connection = duckdb.connect(str(solu_served_index), read_only=True)
    yield connection
    connection.close()


def _top_focus(con, model: str, source: str, unit: int) -> list[tuple[int, int, float]]:
    return con.execute(
        "SELECT seq, pos, act FROM examples WHERE model = ? AND source = ? AND unit = ? AND band IS NULL ORDER BY rank",
        [model, source, unit],
    ).fetchall()


def test_a_neuron_page_links_to_its_other_hooks_and_their_comparison(client):
    html = client.get(f"/{SOLU}/1-mlp-mid/5")
    assert html.status_code == 200
    soup = BeautifulSoup(html.text, "html.parser")
    links = [(a.get_text(), a["href"]) for a in soup.select(".other-hooks a.other-hook")]
    assert links == [("1-mlp-pre/5", f"/{SOLU}/1-mlp-pre/5"), ("1-mlp/5", f"/{SOLU}/1-mlp/5")]
    assert soup.select_one("#compare-hooks")["href"] == f"/{SOLU}/compare?units={HOOKS_OF_5}"
    data = client.get(f"/api/{SOLU}/1-mlp/5").json()
    assert [o["source"] for o in data["other_hooks"]] == ["1-mlp-pre", "1-mlp-mid"]
    assert data["links"]["compare"] == f"/{SOLU}/compare?units={HOOKS_OF_5}"
    # Layer 0 has hook_post only; random directions and SAE features are not one unit at several hooks.
    for path in (f"/api/{SOLU}/0-mlp/5", f"/api/{SOLU}/1-res-pre-rand/5", "/api/tiny/1-res-sae/5"):
        data = client.get(path).json()
        assert (data["other_hooks"], data["links"]["compare"]) == ([], None), path


def test_compare_puts_the_units_side_by_side_with_their_overlap(client, con, tiny_solu_dir):
    import torch

    from actscope.indexer.model.loading import load_model, resolve_model_spec

    response = client.get(f"/api/{SOLU}/compare", params={"units": HOOKS_OF_5})
    assert response.status_code == 200
    data = response.json()
    assert data["units_text"] == HOOKS_OF_5 and [u["ref"] for u in data["units"]] == HOOKS_OF_5.split(",")
    hooks = {"1-mlp-pre": "hook_pre", "1-mlp-mid": "hook_mid", "1-mlp": "hook_post"}
    tokens = torch.tensor(
        [r[0] for r in con.execute("SELECT token_ids FROM sequences WHERE model = ? ORDER BY seq", [SOLU]).fetchall()]
    )
    model = load_model(resolve_model_spec(str(tiny_solu_dir)), "cpu").model
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    focus = []
    for u in data["units"]:
        slug = u["source"]["slug"]
        assert u["source"]["hook_name"] == f"blocks.1.mlp.{hooks[slug]}" and u["index"] == 5
        values = cache[u["source"]["hook_name"]][:, 1:, 5].reshape(-1).double().numpy()
        assert u["stats"]["max"] == pytest.approx(values.max(), abs=1e-5)
        assert u["stats"]["mean"] == pytest.approx(values.mean(), abs=1e-5)
        assert sum(u["stats"]["histogram"]["counts"]) == values.size
        stored = _top_focus(con, SOLU, slug, 5)
        assert [(e["seq"], e["pos"]) for e in u["top"]] == [(s, p) for s, p, _ in stored]
        np.testing.assert_allclose([e["act"] for e in u["top"]], np.sort(values)[::-1][: len(stored)], atol=1e-5)
        focus.append({(s, p) for s, p, _ in stored})
    # SoLU: hook_mid = pre * softmax(pre) keeps the sign of hook_pre, then a LayerNorm gives hook_post.
    pre, mid = (cache[f"blocks.1.mlp.{h}"][..., 5].numpy() for h in ("hook_pre", "hook_mid"))
    assert (np.sign(mid) == np.sign(pre)).all() and not np.allclose(mid, pre)
    pairs = {(p["a"], p["b"]): p for p in data["overlap"]["pairs"]}
    assert set(pairs) == {(0, 1), (0, 2), (1, 2)}
    for (a, b), p in pairs.items():
        shared = sorted(focus[a] & focus[b])
        assert p["comparable"] and p["n_shared"] == len(shared)
        assert [(f["seq"], f["pos"]) for f in p["shared"]] == shared
    assert sum(p["n_shared"] for p in pairs.values()) > 0  # the figures say something here
    assert [(f["seq"], f["pos"]) for f in data["overlap"]["in_all"]] == sorted(set.intersection(*focus))
    for i, u in enumerate(data["units"]):
        for ex in u["top"]:
            expected = [j for j in range(3) if j != i and (ex["seq"], ex["pos"]) in focus[j]]
            assert ex["shared_with"] == expected


def test_the_compare_page_marks_shared_examples_and_links_each_unit(client):
    response = client.get(f"/{SOLU}/compare", params={"units": HOOKS_OF_5})
    assert response.status_code == 200
    soup = BeautifulSoup(response.text, "html.parser")
    assert soup.select_one("#units")["value"] == HOOKS_OF_5
    columns = soup.select(".compare-unit")
    assert [c["data-ref"] for c in columns] == HOOKS_OF_5.split(",")
    assert [c.select_one("h2 a")["href"] for c in columns] == [f"/{SOLU}/{r}" for r in HOOKS_OF_5.split(",")]
    assert all(c.select_one(".hist svg rect.bar") for c in columns)
    data = client.get(f"/api/{SOLU}/compare", params={"units": HOOKS_OF_5}).json()
    for column, unit in zip(columns, data["units"]):
        items = column.select("li.example")
        assert len(items) == len(unit["top"])
        assert [("shared" in li["class"]) for li in items] == [bool(e["shared_with"]) for e in unit["top"]]
    shown = {li["data-a"] + li["data-b"]: li.select_one(".n-shared").get_text() for li in soup.select("li.pair")}
    assert shown == {f"{p['a']}{p['b']}": str(p["n_shared"]) for p in data["overlap"]["pairs"]}
    alternate = soup.select_one('link[rel="alternate"]')["href"]
    assert alternate == f"/api/{SOLU}/compare?units={HOOKS_OF_5}"


def test_a_unit_of_another_served_model(client, con):
    data = client.get(f"/api/{SOLU}/compare", params={"units": "1-mlp/5,tiny:0-mlp/3"}).json()
    assert data["units_text"] == "1-mlp/5,tiny:0-mlp/3"
    other = data["units"][1]
    assert (other["model"], other["source"]["slug"], other["index"], other["url"]) == (
        "tiny",
        "0-mlp",
        3,
        "/tiny/0-mlp/3",
    )
    expected_max = con.execute(
        "SELECT max FROM unit_stats WHERE model = 'tiny' AND source = '0-mlp' AND unit = 3"
    ).fetchone()[0]
    assert other["stats"]["max"] == pytest.approx(expected_max)
    assert [(e["seq"], e["pos"]) for e in other["top"]] == [(s, p) for s, p, _ in _top_focus(con, "tiny", "0-mlp", 3)]
    (pair,) = data["overlap"]["pairs"]
    assert (pair["comparable"], pair["n_shared"], pair["shared"]) == (False, None, [])
    assert data["overlap"]["in_all"] is None
    page = BeautifulSoup(client.get(f"/{SOLU}/compare", params={"units": "1-mlp/5,tiny:0-mlp/3"}).text, "html.parser")
    assert "two corpora" in page.select_one("li.pair").get_text()


@pytest.mark.parametrize(
    "units, message, status",
    [
        ("", "Name two or more units", 422),
        ("1-mlp/5", "Name at least two units to compare (only 1-mlp/5 given)", 422),
        ("1-mlp/5,1-mlp/x", "'1-mlp/x' is not a unit: write source/index", 422),
        ("1-mlp/5,nope/3", "nope/3: solu-tiny has no source 'nope' (sources: ", 404),
        ("1-mlp/5,1-mlp/48", "1-mlp/48: 1-mlp has units 0 to 47.", 404),
        ("1-mlp/5,zzz:1-mlp/1", "zzz:1-mlp/1: no model 'zzz' is served here (models: solu-tiny, tiny).", 404),
        ("1-mlp/5, nope/3", "nope/3: solu-tiny has no source 'nope' (sources: ", 422),  # a space: outside the schema
        ("1-mlp/5,1-mlp/5", "1-mlp/5 is listed twice.", 422),
        (",".join(f"1-mlp/{i}" for i in range(9)), "At most 8 units side by side (9 given).", 422),
    ],
)
def test_bad_units_are_clear_errors_with_the_input_kept(client, units, message, status):
    """The API answers as its contract says: 404 for well-formed units the index lacks."""
    api = client.get(f"/api/{SOLU}/compare", params={"units": units})
    assert api.status_code == status
    assert message in api.json()["error"]["message"]
    page = client.get(f"/{SOLU}/compare", params={"units": units})
    assert page.status_code == 422
    soup = BeautifulSoup(page.text, "html.parser")
    assert message in soup.select_one("#units-error").get_text()
    assert soup.select_one("#units")["value"] == units and soup.select_one("#units")["aria-invalid"] == "true"
    assert not soup.select(".compare-unit")


def test_the_api_takes_units_as_its_schema_writes_them_and_the_page_is_lenient(client):
    api = client.get(f"/api/{SOLU}/compare", params={"units": "1-mlp/5, 1-mlp/6"})
    assert api.status_code == 422 and "no spaces" in api.json()["error"]["message"]
    page = BeautifulSoup(client.get(f"/{SOLU}/compare", params={"units": "1-mlp/5, 1-mlp/6,"}).text, "html.parser")
    assert len(page.select(".compare-unit")) == 2


def test_every_bad_unit_is_named_at_once(client):
    message = client.get(f"/api/{SOLU}/compare", params={"units": "nope/1,1-mlp/99,1-mlp/2"}).json()["error"]["message"]
    assert "nope/1: solu-tiny has no source 'nope'" in message and "1-mlp/99: 1-mlp has units 0 to 47." in message


def test_the_empty_form_is_no_error(client):
    page = client.get(f"/{SOLU}/compare")
    assert page.status_code == 200
    soup = BeautifulSoup(page.text, "html.parser")
    assert soup.select_one("#units")["value"] == "" and not soup.select("#units-error")
    assert client.get("/nope/compare").status_code == 404


def test_random_directions_live_and_left_out_of_try(client, con, tiny_solu_dir):
    """A direction's unit page runs live on the stored vector; the try page lists no control source."""
    import torch

    from actscope.indexer.model.loading import load_model, resolve_model_spec

    text = "def f(x):\n    return x"
    data = client.get(f"/api/{SOLU}/1-res-pre-rand/3", params={"text": text}).json()
    from actscope.indexer.kinds.direction import DirectionKind

    assert data["source"]["kind"] == DirectionKind.name and data["cos_in_out"] is None
    (direction,) = con.execute(
        "SELECT direction FROM directions WHERE model = ? AND source = '1-res-pre-rand' AND unit = 3", [SOLU]
    ).fetchone()
    model = load_model(resolve_model_spec(str(tiny_solu_dir)), "cpu").model
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([data["live"]["token_ids"]]))
    expected = cache["blocks.1.hook_resid_pre"][0].double().numpy() @ np.array(direction, dtype=np.float64)
    np.testing.assert_allclose(data["live"]["acts"], expected, atol=1e-5)
    assert data["logits"] is not None  # a residual-stream direction writes d @ W_U
    page = client.get(f"/{SOLU}/1-res-pre-rand/3", params={"text": text})
    assert page.status_code == 200 and "live-tokens" in page.text
    tried = client.get(f"/api/{SOLU}/try", params={"text": text}).json()
    assert [b["source"] for b in tried["sources"]] == [
        "0-mlp",
        "1-mlp-pre",
        "1-mlp-mid",
        "1-mlp",
    ]  # by layer, as --neurons gave them
