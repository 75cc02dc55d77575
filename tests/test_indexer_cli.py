"""`actscope index` on bad input: a one-line error, exit status 2, no traceback, no file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from actscope.cli import main
from fixtures_models import TINY_CTX


def run_cli(*args: str):
    return CliRunner().invoke(main, ["index", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir, tiny_corpus_dir, tiny_sae_dir):
    """Paths for each kind of bad input."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    root = tmp_path_factory.mktemp("bad")
    (root / "empty_model").mkdir()
    (root / "no_text.jsonl").write_text(json.dumps({"body": "hello"}) + "\n")
    (root / "empty_corpus").mkdir()
    (root / "empty_corpus" / "a.txt").write_text("")
    (root / "short.txt").write_text("a b")
    (root / "bad.jsonl").write_text("{not json\n")
    wrong_width = root / "wrong_width_sae"
    StandardSAE(
        StandardSAEConfig(d_in=16, d_sae=8, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post"))
    ).save_model(str(wrong_width))
    wrong_hook = root / "wrong_hook_sae"
    StandardSAE(
        StandardSAEConfig(d_in=32, d_sae=8, metadata=SAEMetadata(hook_name="blocks.7.hook_resid_post"))
    ).save_model(str(wrong_hook))
    # Trained on a model without center_writing_weights: the tiny SAE, which leaves
    # model_from_pretrained_kwargs unset, wants TransformerLens' default (True).
    raw_weights = root / "raw_weights_sae"
    StandardSAE(
        StandardSAEConfig(
            d_in=32,
            d_sae=8,
            metadata=SAEMetadata(
                hook_name="blocks.1.hook_resid_post", model_from_pretrained_kwargs={"center_writing_weights": False}
            ),
        )
    ).save_model(str(raw_weights))
    locked = root / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    torch.manual_seed(0)
    return {
        "root": root,
        "model": str(tiny_model_dir),
        "corpus": str(tiny_corpus_dir),
        "sae": str(tiny_sae_dir),
        "wrong_width": str(wrong_width),
        "wrong_hook": str(wrong_hook),
        "raw_weights": str(raw_weights),
    }


CASES = [
    ("unknown model name", lambda i: ["--model", "no-such-model-xyz", "--dataset", i["corpus"]], "unknown model"),
    (
        "directory that is not a model",
        lambda i: ["--model", str(i["root"] / "empty_model"), "--dataset", i["corpus"]],
        "neither",
    ),
    (
        "missing model directory",
        lambda i: ["--model", str(i["root"] / "nope"), "--dataset", i["corpus"]],
        "no such directory",
    ),
    (
        "dataset matching no files",
        lambda i: ["--model", i["model"], "--dataset", str(i["root"] / "none" / "*.txt")],
        "no files match",
    ),
    (
        "dataset without the text column",
        lambda i: ["--model", i["model"], "--dataset", str(i["root"] / "no_text.jsonl")],
        "no column 'text'",
    ),
    (
        "invalid JSON lines",
        lambda i: ["--model", i["model"], "--dataset", str(i["root"] / "bad.jsonl")],
        "not valid JSON",
    ),
    (
        "SAE of the wrong width",
        lambda i: ["--model", i["model"], "--dataset", i["corpus"], "--sae", i["wrong_width"]],
        "d_in is 16",
    ),
    (
        "SAE on a hook the model lacks",
        lambda i: ["--model", i["model"], "--dataset", i["corpus"], "--sae", i["wrong_hook"]],
        "does not exist",
    ),
    (
        "SAEs trained on differently processed models, one leaving it unset",
        lambda i: ["--model", i["model"], "--dataset", i["corpus"], "--sae", i["sae"], "--sae", i["raw_weights"]],
        "the SAEs need differently processed models (center_writing_weights=True vs False)",
    ),
    (
        "reserved model name",
        lambda i: ["--model", i["model"], "--dataset", i["corpus"], "--name", "static"],
        "--name 'static': reserved for the site's own pages",
    ),
    (
        "model name that is not a URL name",
        lambda i: ["--model", i["model"], "--dataset", i["corpus"], "--name", "My Model"],
        "a model's name is lower-case letters",
    ),
    (
        "SAE directory missing",
        lambda i: ["--model", i["model"], "--dataset", i["corpus"], "--sae", str(i["root"] / "nope")],
        "no such directory",
    ),
    (
        "ctx beyond the model's context",
        lambda i: ["--model", i["model"], "--dataset", i["corpus"], "--ctx", "65"],
        "larger than the model's context of 64",
    ),
    (
        "empty corpus",
        lambda i: ["--model", i["model"], "--dataset", str(i["root"] / "empty_corpus")],
        "empty or shorter than one sequence",
    ),
    (
        "corpus shorter than one sequence",
        lambda i: ["--model", i["model"], "--dataset", str(i["root"] / "short.txt")],
        "empty or shorter than one sequence",
    ),
    (
        "max-tokens below one sequence",
        lambda i: ["--model", i["model"], "--dataset", i["corpus"], "--max-tokens", "10"],
        "smaller than one sequence",
    ),
    (
        "unknown neuron hook",
        lambda i: ["--model", i["model"], "--dataset", i["corpus"], "--neurons", "blocks.0.hook_resid_pre"],
        "not an MLP neuron hook",
    ),
    (
        "directions without N@",
        lambda i: ["--model", i["model"], "--dataset", i["corpus"], "--directions", "blocks.0.mlp.hook_post"],
        "expected N@HOOK",
    ),
    (
        "zero directions",
        lambda i: ["--model", i["model"], "--dataset", i["corpus"], "--directions", "0@blocks.0.mlp.hook_post"],
        "must be at least 1, not 0",
    ),
    (
        "directions at a hook the model lacks",
        lambda i: ["--model", i["model"], "--dataset", i["corpus"], "--directions", "4@blocks.9.mlp.hook_post"],
        "no hook blocks.9.mlp.hook_post (e.g. blocks.0.mlp.hook_post, blocks.1.mlp.hook_post)",
    ),
    (
        "directions at a hook without positions",
        lambda i: ["--model", i["model"], "--dataset", i["corpus"], "--directions", "4@blocks.0.attn.hook_pattern"],
        "no activation per token position",
    ),
]


@pytest.mark.parametrize("name, make_args, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_error(inputs, tmp_path, name, make_args, message):
    out = tmp_path / "index.duckdb"
    result = run_cli(
        *make_args(inputs),
        "--out",
        str(out),
        "--ctx" if "--ctx" not in make_args(inputs) else "--seed",
        str(TINY_CTX) if "--ctx" not in make_args(inputs) else "0",
        "--quiet",
        "--device",
        "cpu",
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists() and not Path(str(out) + ".tmp").exists()


@pytest.mark.parametrize(
    "where, message", [("missing/dir/x.duckdb", "does not exist"), ("locked/x.duckdb", "not writable")]
)
def test_bad_output_location(inputs, where, message):
    if where.startswith("locked") and os.geteuid() == 0:
        pytest.skip("root can write into a read-only directory")
    result = run_cli(
        "--model", inputs["model"], "--dataset", inputs["corpus"], "--out", str(inputs["root"] / where), "--quiet"
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr


def test_real_process_prints_no_traceback(inputs, tmp_path):
    """The installed console script, not just the click object, hides tracebacks."""
    exe = Path(sys.executable).parent / "actscope"
    proc = subprocess.run(
        [
            str(exe),
            "index",
            "--model",
            "no-such-model-xyz",
            "--dataset",
            inputs["corpus"],
            "--out",
            str(tmp_path / "x.duckdb"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --model no-such-model-xyz")
    assert "Traceback" not in proc.stderr


def test_error_after_calibration_leaves_no_file_and_the_next_run_works(inputs, tmp_path):
    """A corpus that turns bad after the first batches: the partial file is removed, and the
    same process then writes an index at the same place."""
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.model.loading import load_model, resolve_model_spec

    docs = [path.read_text() for path in sorted(Path(inputs["corpus"]).glob("*.txt"))]
    tokenizer = load_model(resolve_model_spec(inputs["model"]), "cpu").tokenizer
    n_good_tokens = sum(len(tokenizer(doc)["input_ids"]) for doc in docs)
    assert n_good_tokens > 2 * IndexConfig.calibration_tokens  # the bad line comes after calibration
    corpus = tmp_path / "turns_bad.jsonl"
    corpus.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs) + "{not json\n")
    out = tmp_path / "index.duckdb"
    common = ["--model", inputs["model"], "--out", str(out), "--ctx", str(TINY_CTX), "--quiet", "--device", "cpu"]

    result = run_cli(*common, "--dataset", str(corpus))
    assert result.exit_code == 2, result.output
    assert f"{corpus}:{len(docs) + 1} is not valid JSON" in result.stderr
    assert not out.exists() and not Path(str(out) + ".tmp").exists()
    assert not Path(str(out) + ".tmp.wal").exists()

    result = run_cli(*common, "--dataset", inputs["corpus"])
    assert result.exit_code == 0, result.output
    assert out.exists() and not Path(str(out) + ".tmp").exists()


def test_writer_that_fails_to_start_leaves_its_file_free(tmp_path, monkeypatch):
    """A failure while a new index file's tables are made detaches the file again: the
    process's next writer of the same path starts, where it would find it still attached."""
    from actscope.indexer.store import schema
    from actscope.indexer.store.writer import StoreWriter

    path = tmp_path / "index.duckdb.tmp"

    def broken(con):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(schema, "create_all", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            StoreWriter(path, "m", fresh=True)
    writer = StoreWriter(path, "m", fresh=True)
    writer.set_meta("k", "v")
    writer.close()
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT value FROM meta WHERE key = 'k'").fetchall() == [("v",)]
    finally:
        con.close()


def test_an_sae_leaving_the_processing_unset_wants_the_loaders_defaults(inputs):
    """Unset model_from_pretrained_kwargs means TransformerLens' defaults: it agrees with
    an SAE that sets them explicitly, and the model is loaded with them."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from actscope.indexer.model.loading import DEFAULT_PROCESSING
    from actscope.indexer.model.saes import load_sae, resolve_sae_spec, sae_processing

    unset = load_sae(resolve_sae_spec(inputs["sae"]))
    explicit = StandardSAE(
        StandardSAEConfig(
            d_in=32,
            d_sae=8,
            metadata=SAEMetadata(
                hook_name="blocks.1.hook_resid_post", model_from_pretrained_kwargs={"center_writing_weights": True}
            ),
        )
    )
    assert sae_processing([unset]) == DEFAULT_PROCESSING
    assert sae_processing([explicit, unset]) == DEFAULT_PROCESSING
