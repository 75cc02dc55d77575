"""Several index files in one server (issue 18): every model of every file under its own
name, each page and answer from its own file, each model with its own live service, two
files holding the same model name refused, and one file reloaded while the others go
on as they were.

The files are copies of two real tiny indexes ('tiny' and 'solu-tiny', built by the
indexer) in a directory, served by uvicorn over the directory as `actscope serve DIR`
serves it; references come from the files themselves, read with DuckDB."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import duckdb
import httpx
import pytest
from bs4 import BeautifulSoup

from fixtures_web import ServerThread

MODELS = ("tiny", "solu-tiny")  # the directory's files in name order: solu-tiny.duckdb, tiny.duckdb
TEXT = "def wrap(text, width):"


def _rows(path: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _unit_max(path: Path, model: str, source: str, unit: int) -> float:
    sql = "SELECT max FROM unit_stats WHERE model = ? AND source = ? AND unit = ?"
    return _rows(path, sql, [model, source, unit])[0][0]


@pytest.fixture(scope="module")
def served_dir(tmp_path_factory, tiny_index, tiny_solu_index) -> Path:
    folder = tmp_path_factory.mktemp("indexes")
    shutil.copyfile(tiny_index, folder / "tiny.duckdb")
    shutil.copyfile(tiny_solu_index, folder / "solu-tiny.duckdb")
    (folder / "notes.txt").write_text("not an index")  # only *.duckdb files are served
    return folder


@pytest.fixture(scope="module")
def server(served_dir):
    """uvicorn serving the directory, reloading a file when it changes, the first
    model's live model preloaded (as `actscope serve` does)."""
    from actscope.app.reload import ReloadingApp
    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    settings = Settings(
        index_file=str(served_dir),
        root_path="",
        preload_live=True,
        reload_on_change=True,
        reload_interval_s=0.1,
    )
    reloading = ReloadingApp(settings, create_app)
    with ServerThread(reloading) as thread:
        thread.reloading = reloading
        yield thread


def test_directory_serves_every_index_in_it_by_name(served_dir):
    from actscope.app.settings import Settings

    settings = Settings(index_file=[served_dir, served_dir / "tiny.duckdb"], root_path="")
    assert settings.index_file == [served_dir / "solu-tiny.duckdb", served_dir / "tiny.duckdb"]
    os_list = os.pathsep.join([str(served_dir / "tiny.duckdb"), str(served_dir / "solu-tiny.duckdb")])
    assert Settings(index_file=os_list).index_file == [served_dir / "tiny.duckdb", served_dir / "solu-tiny.duckdb"]


def test_home_lists_every_model_with_its_own_corpus_and_file(server, served_dir):
    html = httpx.get(server.url + "/").text
    soup = BeautifulSoup(html, "html.parser")
    sections = {s["id"]: s for s in soup.select("section.model")}
    assert set(sections) == {"model-solu-tiny", "model-tiny"}
    data = httpx.get(server.url + "/api").json()
    assert [m["model"] for m in data["models"]] == ["solu-tiny", "tiny"]
    assert [(i["file"], i["models"]) for i in data["indexes"]] == [
        ("solu-tiny.duckdb", ["solu-tiny"]),
        ("tiny.duckdb", ["tiny"]),
    ]
    for m in data["models"]:
        path = served_dir / f"{m['model']}.duckdb"
        ((n_tokens, n_sequences),) = _rows(path, "SELECT n_tokens, n_sequences FROM models")
        sources = [s for (s,) in _rows(path, "SELECT slug FROM sources ORDER BY slug")]
        assert (m["index"], m["n_tokens"], m["n_sequences"]) == (path.name, n_tokens, n_sequences)
        assert sorted(s["slug"] for s in m["sources"]) == sources
        section = sections[f"model-{m['model']}"]
        line = section.select_one("p.corpus").get_text(" ", strip=True)
        assert f"{n_tokens:,} tokens in {n_sequences:,} sequences" in line and path.name in line
        assert sorted(a.get_text() for a in section.select("a.source-link")) == sources
    assert data["n_tokens"] == sum(m["n_tokens"] for m in data["models"])
    assert len(soup.select("details.run")) == 2
    assert str(served_dir) not in html


def test_files_of_one_name_are_told_apart_by_their_folders(tmp_path, tiny_index, tiny_solu_index):
    from fixtures_web import make_client

    for folder, index in (("seed0", tiny_index), ("seed1", tiny_solu_index)):
        (tmp_path / folder).mkdir()
        shutil.copyfile(index, tmp_path / folder / "index.duckdb")
    with make_client([tmp_path / "seed0" / "index.duckdb", tmp_path / "seed1" / "index.duckdb"], live=False) as c:
        data = c.get("/api").json()
        assert [(i["file"], i["models"]) for i in data["indexes"]] == [
            ("seed0/index.duckdb", ["tiny"]),
            ("seed1/index.duckdb", ["solu-tiny"]),
        ]
        assert c.get("/api/solu-tiny").json()["index"] == "seed1/index.duckdb"
        assert str(tmp_path) not in c.get("/").text


def test_each_model_answers_from_its_own_file(server, served_dir):
    for model in MODELS:
        path = served_dir / f"{model}.duckdb"
        for source, n_units in _rows(path, "SELECT slug, n_units FROM sources WHERE model = ?", [model]):
            unit = n_units - 1
            data = httpx.get(f"{server.url}/api/{model}/{source}/{unit}").json()
            assert data["stats"]["max"] == pytest.approx(_unit_max(path, model, source, unit), rel=1e-6)
            page = httpx.get(f"{server.url}/{model}/{source}/{unit}")
            assert page.status_code == 200 and f"{source}/{unit}" in page.text
        assert httpx.get(f"{server.url}/{model}").status_code == 200
        assert httpx.get(f"{server.url}/embed/{model}/0-mlp/0").status_code == 200
        exported = httpx.get(f"{server.url}/api/{model}/0-mlp/export.jsonl").text.splitlines()
        assert (
            len(exported)
            == _rows(path, "SELECT n_units FROM sources WHERE model = ? AND slug = '0-mlp'", [model])[0][0]
        )
    # The compare view takes units of a model of another file.
    r = httpx.get(f"{server.url}/api/tiny/compare", params={"units": "0-mlp/1,solu-tiny:0-mlp/2"})
    assert r.status_code == 200, r.text
    assert [(u["model"], u["stats"]["max"]) for u in r.json()["units"]] == [
        ("tiny", pytest.approx(_unit_max(served_dir / "tiny.duckdb", "tiny", "0-mlp", 1), rel=1e-6)),
        ("solu-tiny", pytest.approx(_unit_max(served_dir / "solu-tiny.duckdb", "solu-tiny", "0-mlp", 2), rel=1e-6)),
    ]
    page = httpx.get(f"{server.url}/solu-tiny/compare", params={"units": "0-mlp/2,tiny:0-mlp/1"})
    assert page.status_code == 200 and "tiny:0-mlp/1" in page.text
    # A source of one model is not another's; an unknown model names those served.
    assert httpx.get(f"{server.url}/api/tiny/1-mlp-pre/0").status_code == 404
    assert httpx.get(f"{server.url}/api/solu-tiny/1-mlp-pre/0").status_code == 200
    r = httpx.get(f"{server.url}/api/gpt2/0-mlp/0")
    assert r.status_code == 404 and "solu-tiny, tiny" in r.json()["error"]["message"]
    assert httpx.get(f"{server.url}/gpt2/0-mlp").status_code == 404


def test_each_model_runs_its_own_live_model_loaded_when_first_asked(server, served_dir, client):
    catalog = server.reloading.catalog
    first, second = catalog.live("solu-tiny"), catalog.live("tiny")
    deadline = time.monotonic() + 60
    while not first.loaded and time.monotonic() < deadline:  # preloaded: the first model only
        time.sleep(0.1)
    assert first.loaded and not second.loaded
    # The second model's answer is the one a server of its file alone gives.
    body = {"text": TEXT, "source": "0-mlp", "index": 5}
    r = httpx.post(f"{server.url}/api/tiny/activations", json=body, timeout=60)
    alone = client.post("/api/tiny/activations", json=body)
    assert r.status_code == alone.status_code == 200, r.text
    assert r.json()["acts"] == alone.json()["acts"] and r.json()["token_ids"] == alone.json()["token_ids"]
    assert second.loaded and catalog.live("tiny") is second
    # The first model's top units are units of its own 0-mlp (48 neurons; tiny's has 64).
    r = httpx.post(f"{server.url}/api/solu-tiny/activations", json={"text": TEXT, "source": "0-mlp", "k": 48})
    indexes = {u["index"] for row in r.json()["top"] for u in row}
    assert r.status_code == 200 and indexes == set(range(48))


def test_same_model_name_in_two_files_is_refused_naming_both(tmp_path, tiny_index, tiny_topk_index, restored_environ):
    from click.testing import CliRunner

    from actscope.app.server import create_app
    from actscope.app.settings import Settings
    from actscope.cli import main
    from actscope.indexer.errors import ActscopeError

    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    shutil.copyfile(tiny_index, a)
    shutil.copyfile(tiny_topk_index, b)  # also a model named 'tiny'
    with pytest.raises(ActscopeError, match="model named 'tiny'") as refused:
        create_app(Settings(index_file=[a, b], root_path=""))
    assert f"{a} and {b}" in str(refused.value)
    result = CliRunner().invoke(main, ["serve", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {refused.value}"]
    assert "serving" not in result.output


def test_serve_takes_several_files_and_directories(served_dir, monkeypatch, restored_environ):
    import uvicorn
    from click.testing import CliRunner

    from actscope.cli import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(app))
    os.environ["ACTSCOPE_LIVE"] = "false"
    result = CliRunner().invoke(main, ["serve", str(served_dir / "tiny.duckdb"), str(served_dir)])
    assert result.exit_code == 0, result.output
    assert (
        f"serving 2 index files ({served_dir / 'tiny.duckdb'}: tiny; {served_dir / 'solu-tiny.duckdb'}: solu-tiny)"
        in (result.output)
    )
    # Worker processes read the same files from the environment, whatever their directory.
    assert os.environ["ACTSCOPE_INDEX_FILE"].split(os.pathsep) == [
        str((served_dir / "tiny.duckdb").resolve()),
        str((served_dir / "solu-tiny.duckdb").resolve()),
    ]
    assert [m.model for m in calls[-1].catalog.models()] == ["tiny", "solu-tiny"]
    calls[-1].catalog.close()


def _wait(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_one_file_rebuilt_is_reloaded_alone(server, served_dir, tiny_topk_index, tiny_index):
    """The 'tiny' file is replaced (as the indexer does, by a rename): its pages come
    from the new file; 'solu-tiny' keeps its open file, live model and cached pages.
    A replacement holding a model name already served is refused and not served."""
    reloading = server.reloading
    before = reloading.catalog
    solu_file, solu_live = before.file_of("solu-tiny"), before.live("solu-tiny")
    old_tiny = before.file_of("tiny")
    solu_page = f"{server.url}/api/solu-tiny/1-mlp/2"
    cached = httpx.get(solu_page).content
    unit = f"{server.url}/api/tiny/1-res-sae/0"
    old_max = _unit_max(served_dir / "tiny.duckdb", "tiny", "1-res-sae", 0)
    new_max = _unit_max(tiny_topk_index, "tiny", "1-res-sae", 0)
    assert old_max != new_max and httpx.get(unit).json()["stats"]["max"] == pytest.approx(old_max, rel=1e-6)

    shutil.copyfile(tiny_topk_index, served_dir / "tiny.duckdb.tmp")
    os.replace(served_dir / "tiny.duckdb.tmp", served_dir / "tiny.duckdb")
    _wait(lambda: reloading.reloads == 1, "the rebuilt file was not reloaded")
    assert httpx.get(unit).json()["stats"]["max"] == pytest.approx(new_max, rel=1e-6)
    after = reloading.catalog
    assert after.file_of("solu-tiny") is solu_file and after.live("solu-tiny") is solu_live and solu_live.loaded
    assert [f.path.name for f in after.opened] == ["tiny.duckdb"]
    _wait(lambda: old_tiny.holders == 0, "the old file was not let go")
    cache = reloading.current.app.state.response_cache
    hits = cache.hits
    assert httpx.get(solu_page).content == cached and cache.hits == hits + 1  # adopted, not rendered again

    # 'solu-tiny.duckdb' replaced by an index of 'tiny': refused, the old file goes on.
    shutil.copyfile(tiny_index, served_dir / "solu-tiny.duckdb.tmp")
    os.replace(served_dir / "solu-tiny.duckdb.tmp", served_dir / "solu-tiny.duckdb")
    _wait(lambda: served_dir / "solu-tiny.duckdb" in reloading._failed, "the clashing file was not tried")
    assert reloading.reloads == 1 and reloading.catalog is after
    assert httpx.get(solu_page).status_code == 200 and solu_file.holders == 1


@pytest.mark.browser
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_home_of_several_indexes_fits_a_phone(browser, server, scheme):
    from contrast import contrast_of

    context = browser.new_context(viewport={"width": 390, "height": 800}, color_scheme=scheme)
    page = context.new_page()
    page.goto(server.url + "/")
    assert page.locator("section.model p.corpus").count() == 2
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for selector in ("section.model p.corpus", "section.model .index-file", "details.run summary"):
        assert contrast_of(page.locator(selector).first) >= 4.5, (scheme, selector)
    context.close()
