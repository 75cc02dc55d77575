"""Live inference: checked against a direct TransformerLens run on the same tokens."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from bs4 import BeautifulSoup

from actscope.app import schemas
from actscope.app.errors import AppError
from fixtures_web import token_of

M = "tiny"
TEXT = "def wrap(text, width):\n    return text.split()"


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tiny_sae_dir):
    """Direct activations: run_with_hooks on the model, SAELens encode for the SAE."""
    import torch
    from sae_lens import SAE

    from actscope.indexer.model.loading import ModelSpec, load_model

    loaded = load_model(ModelSpec("native", str(tiny_model_dir), "tiny"), "cpu")
    sae = SAE.load_from_disk(str(tiny_sae_dir))

    def run(ids: list[int], hook: str, use_sae: bool = False) -> np.ndarray:
        cache = {}

        def save(act, hook):
            cache["act"] = act.detach()

        with torch.no_grad():
            loaded.model.run_with_hooks(torch.tensor([ids]), return_type=None, fwd_hooks=[(hook, save)])
            act = cache["act"][0]
            if use_sae:
                act = sae.encode(act)
        return act.float().numpy()

    run.bos = loaded.bos_token_id
    run.tokenizer = loaded.tokenizer
    return run


def test_unit_activations_match_a_direct_run(client, reference):
    r = client.post(f"/api/{M}/activations", json={"text": TEXT, "source": "0-mlp", "index": 7})
    assert r.status_code == 200, r.text
    data = r.json()
    schemas.LiveUnitOut.model_validate(data)
    ids = data["token_ids"]
    assert ids[0] == reference.bos
    assert ids[1:] == reference.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) < client.get(f"/api/{M}").json()["ctx"]  # not truncated
    assert len(data["tokens"]) == len(ids) == len(data["acts"])
    direct = reference(ids, "blocks.0.mlp.hook_post")[:, 7]
    assert data["acts"] == pytest.approx(direct.tolist(), abs=1e-5)
    assert not data["truncated"]


def test_sae_activations_match_a_direct_run(client, reference):
    data = client.post(f"/api/{M}/activations", json={"text": TEXT, "source": "1-res-sae", "k": 3}).json()
    schemas.LiveTopOut.model_validate(data)
    direct = reference(data["token_ids"], "blocks.1.hook_resid_post", use_sae=True)
    for p, units in enumerate(data["top"]):
        assert len(units) == 3
        assert units[0]["act"] == pytest.approx(float(direct[p].max()), abs=1e-5)
        for u in units:
            assert u["act"] == pytest.approx(float(direct[p, u["index"]]), abs=1e-5)
            assert u["url"] == f"/{M}/1-res-sae/{u['index']}"
    best = direct[1:].max(axis=0)
    assert [u["index"] for u in data["overall"]] == list(np.argsort(-best, kind="stable")[:3])


def test_live_on_a_stored_sequence_reproduces_the_stored_examples(client):
    """The app's live path and the indexer agree: same activations on the same tokens."""
    unit = client.get(f"/api/{M}/1-mlp/3").json()
    ex = unit["top"][0]
    seq = client.get(f"/api/{M}/sequences/{ex['seq']}").json()
    html = client.get(f"/{M}/sequences/{ex['seq']}?source=1-mlp&index=3&pos={ex['pos']}").text
    toks = BeautifulSoup(html, "html.parser").select(".full-seq .toks .t")
    assert len(toks) == len(seq["token_ids"])
    live = [float(t["data-act"]) for t in toks]
    window = live[ex["start"] : ex["start"] + len(ex["acts"])]
    assert window == pytest.approx(ex["acts"], abs=2e-4)
    assert "focus" in toks[ex["pos"]]["class"]


def test_unit_page_with_text_is_tinted_and_shareable(client):
    r = client.get(f"/{M}/0-mlp/5", params={"text": TEXT})
    assert r.status_code == 200
    soup = BeautifulSoup(r.text, "html.parser")
    toks = soup.select("#live-result .live-tokens .t")
    twin = client.get(soup.find("link", rel="alternate", type="application/json")["href"]).json()
    assert twin["live"]["text"] == TEXT
    assert [token_of(t) for t in toks] == twin["live"]["tokens"]
    assert [float(t["data-act"]) for t in toks] == pytest.approx(twin["live"]["acts"], abs=1e-4)
    assert soup.select_one("#live-text").get_text() == TEXT
    # The htmx fragment pushes the shareable URL.
    frag = client.get(f"/{M}/0-mlp/5/live", params={"text": TEXT}, headers={"HX-Request": "true"})
    assert frag.status_code == 200 and "<html" not in frag.text
    assert frag.headers["HX-Push-Url"].startswith(f"/{M}/0-mlp/5?text=")
    # Without htmx the fragment URL redirects to the page.
    plain = client.get(f"/{M}/0-mlp/5/live", params={"text": "hi"}, follow_redirects=False)
    assert plain.status_code == 303 and plain.headers["location"] == f"/{M}/0-mlp/5?text=hi"


@pytest.mark.parametrize("text", ["", "   ", "\n\t  \n"])
def test_empty_text_is_a_clear_422(client, text):
    r = client.post(f"/api/{M}/activations", json={"text": text, "source": "0-mlp", "index": 0})
    assert r.status_code == 422 and "empty" in r.json()["error"]["message"].lower()
    r = client.get(f"/api/{M}/0-mlp/0", params={"text": text})
    assert r.status_code == 422 and r.json()["error"]["status"] == 422
    r = client.get(f"/{M}/0-mlp/0", params={"text": text})
    assert r.status_code == 422
    assert "empty" in BeautifulSoup(r.text, "html.parser").select_one(".live-error").get_text().lower()


@pytest.mark.parametrize("text", ["🙂 emoji 🚀 ✨", "control\x00chars\x07\x1b[31m here", "<script>alert(1)</script>"])
def test_odd_text_works(client, text):
    data = client.post(f"/api/{M}/activations", json={"text": text, "source": "0-mlp", "index": 1}).json()
    assert len(data["acts"]) == len(data["tokens"]) > 1
    html = client.get(f"/{M}/0-mlp/1", params={"text": text}).text
    assert "<script>alert(1)</script>" not in html


def test_long_text_is_truncated_with_a_notice(client):
    ctx = client.get(f"/api/{M}").json()["ctx"]
    text = "return the value of the thing " * 3500  # ~100 kB
    data = client.post(f"/api/{M}/activations", json={"text": text, "source": "0-mlp", "index": 1}).json()
    assert data["truncated"] is True and len(data["token_ids"]) == ctx
    # A page URL carries a shorter (but still too long) text.
    soup = BeautifulSoup(client.get(f"/{M}/0-mlp/1", params={"text": text[:3000]}).text, "html.parser")
    assert "longer than the model's context" in soup.select_one(".notice.truncated").get_text()


def test_unknown_source_or_unit_in_live_requests(client):
    r = client.post(f"/api/{M}/activations", json={"text": "x", "source": "nope", "index": 0})
    assert r.status_code == 404
    r = client.post(f"/api/{M}/activations", json={"text": "x", "source": "0-mlp", "index": 10**6})
    assert r.status_code == 404
    r = client.post(f"/api/{M}/activations", json={"text": "x", "source": "0-mlp", "k": 0})
    assert r.status_code == 422


def test_try_page_and_search_by_inference(client):
    soup = BeautifulSoup(
        client.get(f"/{M}/try", params={"text": TEXT, "source": "1-mlp", "pos": 2}).text, "html.parser"
    )
    twin = client.get(f"/api/{M}/try", params={"text": TEXT, "source": "1-mlp", "pos": 2}).json()
    toks = soup.select(".try-tokens a.t")
    assert len(toks) == len(twin["tokens"])
    assert "pos=2" in toks[2]["href"] and "focus" in toks[2]["class"]
    # Tokens are coloured by the source asked for; every source lists its units.
    mlp = next(b for b in twin["sources"] if b["source"] == "1-mlp")
    assert [float(t["data-act"]) for t in toks] == pytest.approx(mlp["max_per_token"], abs=1e-4)
    token_units = [a["href"].split("?")[0] for a in soup.select(".token-units a.unit-link")]
    assert token_units == [u["url"] for b in twin["sources"] for u in b["top"][2]]
    # Each unit also links to what mattered to it at this token (issue 18).
    why = [a["href"].split("?") for a in soup.select(".token-units a.why-link")]
    assert [w[0] for w in why] == [u["url"] + "/explain" for b in twin["sources"] for u in b["top"][2]]
    assert all("pos=2" in w[1] and "text=" in w[1] for w in why)
    overall = [a["href"].split("?")[0] for a in soup.select(".overall-units a.unit-link")]
    assert overall == [u["url"] for b in twin["sources"] for u in b["overall"]]
    search = client.get(f"/api/{M}/search", params={"text": TEXT, "text_source": "1-mlp"}).json()
    acts = [u["act"] for u in search["live"]["overall"]]
    assert acts == sorted(acts, reverse=True) and len(acts) == 20 and search["live"]["source"] == "1-mlp"


class SlowLive:
    """A stand-in LiveModel that takes `delay` seconds per call."""

    def __init__(self, delay: float):
        self.delay = delay

    def tokenize_batch(self, texts):
        return [([0, 1, 2], False) for _ in texts]

    def token_strings(self, ids):
        return ["<bos>", "a", "b"]

    def activations(self, ids, slug):
        time.sleep(self.delay)
        return np.zeros((len(ids), 4), dtype=np.float32)


def _service(web_index, **kw):
    from actscope.app.live_service import LiveService
    from actscope.indexer.store.reader import Store

    store = Store(web_index)
    m = store.models()[0]
    svc = LiveService(m, store.sources(m.model), **kw)
    svc._live = SlowLive(0.5)
    return svc


def test_live_requests_are_bounded(web_index):
    # The queue is full: refused at once.
    svc = _service(web_index, max_waiting=1, timeout_s=5)
    t = threading.Thread(target=svc.run, args=("first", "0-mlp"))
    t.start()
    time.sleep(0.1)
    with pytest.raises(AppError) as exc:
        svc.run("second", "0-mlp")
    assert exc.value.status == 503 and "busy" in exc.value.message
    t.join()
    # Not served in time: refused after the time-out.
    svc = _service(web_index, max_waiting=4, timeout_s=0.8, max_batch=1)
    t = threading.Thread(target=svc.run, args=("first", "0-mlp"))
    t.start()
    time.sleep(0.1)
    start = time.monotonic()
    with pytest.raises(AppError) as exc:
        svc.run("second", "0-mlp")
    assert exc.value.status == 503 and "Timed out" in exc.value.message
    assert 0.6 < time.monotonic() - start < 2.0
    t.join()
    # A cached text needs no model time at all.
    start = time.monotonic()
    svc.run("first", "0-mlp")
    assert time.monotonic() - start < 0.4


def test_concurrent_live_requests_are_batched_and_exact(client, web_index, reference):
    """Requests queued together run as one padded batch, tokenized together; results
    equal single runs, and each text's tokens are the tokenizer's own for that text."""
    from concurrent.futures import ThreadPoolExecutor

    ctx = client.get(f"/api/{M}").json()["ctx"]
    texts = [f"return {'x' * i} + value{i}" for i in range(1, 12)] + [" café <|endoftext|> " * ctx]
    live = client.app.state.catalog.live(M)
    singles = [live.run_ids(live.run(t, "1-res-sae").token_ids, "1-res-sae").acts for t in texts]
    live._cache.clear()
    passes = live.forward_passes
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda t: live.run(t, "1-res-sae"), texts))
    assert live.forward_passes - passes < len(texts)  # some requests shared a pass
    for text, res, single in zip(texts, results, singles):
        own = reference.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert res.token_ids == [reference.bos] + own[: ctx - 1]
        assert res.truncated == (len(own) > ctx - 1)
        assert res.acts.shape == single.shape
        np.testing.assert_allclose(res.acts, single, atol=1e-4)


def test_live_switched_off_is_503_with_the_error_shape(web_index):
    from fixtures_web import make_client

    with make_client(web_index, live=False) as c:
        r = c.post(f"/api/{M}/activations", json={"text": "x", "source": "0-mlp", "index": 0})
        assert r.status_code == 503 and r.json()["error"]["status"] == 503
        assert c.get(f"/{M}/0-mlp/0").status_code == 200


def test_model_directory_gone_is_503_naming_it_and_pages_still_serve(web_index, tmp_path):
    """An index served away from the directory its model was indexed from (another
    checkout, a container): live inference says where the model was; pages serve."""
    import json
    import shutil

    import duckdb

    from fixtures_web import make_client

    moved = tmp_path / "moved.duckdb"
    shutil.copyfile(web_index, moved)
    con = duckdb.connect(str(moved))
    spec = json.loads(con.execute("SELECT spec FROM models").fetchone()[0])
    spec["name"] = str(tmp_path / "elsewhere" / "tiny")
    con.execute("UPDATE models SET spec = ?", [json.dumps(spec)])
    con.close()
    with make_client(moved) as c:
        r = c.post(f"/api/{M}/activations", json={"text": "x", "source": "0-mlp", "index": 0})
        assert r.status_code == 503, r.text
        message = r.json()["error"]["message"]
        assert f"its directory {tmp_path / 'elsewhere' / 'tiny'} (where it was indexed from) is gone" in message
        page = c.get(f"/{M}/0-mlp/0", params={"text": "x"})
        assert page.status_code == 503 and "(where it was indexed from) is gone" in page.text
        assert c.get(f"/{M}/0-mlp/1").status_code == 200
