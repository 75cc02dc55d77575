"""Tokens as bytes: what the index stores per token, what the JSON says, what pages show.

The tiny model's tokenizer is a byte-level BPE of 400 tokens trained on ASCII code, so
"é" and "日" split into tokens that hold single bytes, as GPT-2 splits rarer characters.
"""

from __future__ import annotations

import codecs
import json

import duckdb
import pytest
from bs4 import BeautifulSoup

from fixtures_web import token_id_of, token_of

M = "tiny"
codecs.register_error(
    "actscope-test-hex", lambda e: ("".join(f"<0x{b:02X}>" for b in e.object[e.start : e.end]), e.end)
)
TEXT = "café naïve 日本 \x1c end"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def stored_bytes(web_index) -> dict[int, bytes]:
    con = duckdb.connect(str(web_index), read_only=True)
    try:
        return {i: bytes(b) for i, b in con.execute("SELECT token_id, token_bytes FROM vocab").fetchall()}
    finally:
        con.close()


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_stored_bytes_spell_the_text_the_tokenizer_encoded(tokenizer, stored_bytes):
    # The tokenizer's own encoding, independent of how the index derived the bytes.
    for text in [TEXT, "naïve\n\tx = 'ü' # 日本語", "def f():\n    return 1"]:
        ids = tokenizer.encode(text).ids
        assert b"".join(stored_bytes[i] for i in ids) == text.encode("utf-8")
    # Each token's decoded text is its bytes, a lost byte sequence read as U+FFFD.
    decoded = tokenizer.decode_batch([[i] for i in range(tokenizer.get_vocab_size())], skip_special_tokens=False)
    assert [stored_bytes[i].decode("utf-8", errors="replace") for i in range(len(decoded))] == decoded
    assert sum(not _utf8(b) for b in stored_bytes.values()) >= 64  # the bytes 0x80..0xFF at least


def test_sentencepiece_byte_fallback_tokens_are_their_bytes():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from actscope.indexer.model.token_bytes import vocab_bytes

    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}, "\u2581": 257, "a": 258, "\u2581a": 259}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("\u2581", "a")], unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    raw = vocab_bytes(tok, len(vocab))
    ids = tok("a é", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["\u2581a", "\u2581", "<0xC3>", "<0xA9>"]
    assert b"".join(raw[i] for i in ids) == " a é".encode()
    assert raw[1 + 0xC3] == b"\xc3" and raw[259] == b" a"


def test_json_token_bytes_of_live_text(client, tokenizer, stored_bytes):
    data = client.post(f"/api/{M}/activations", json={"text": TEXT, "source": "0-mlp", "index": 1}).json()
    ids = data["token_ids"]
    assert ids[1:] == tokenizer.encode(TEXT).ids
    want = [None if _utf8(stored_bytes[i]) else stored_bytes[i].hex() for i in ids]
    assert data["token_bytes"] == want
    got = b"".join(
        bytes.fromhex(h) if h else t.encode("utf-8") for t, h in zip(data["tokens"][1:], data["token_bytes"][1:])
    )
    assert got == TEXT.encode("utf-8")
    assert data["token_bytes"].count(None) < len(ids) - 4  # é, ï and the CJK split into bytes
    # The try page's JSON (every unit per token) carries them too.
    top = client.get(f"/api/{M}/try", params={"text": TEXT, "source": "0-mlp"}).json()
    assert top["token_bytes"] == want


def test_json_token_bytes_of_examples_logits_and_sequences(client, stored_bytes):
    seen_bytes = 0
    for index in range(64):
        unit = client.get(f"/api/{M}/1-mlp/{index}").json()
        for lg in unit["logits"]["top"] + unit["logits"]["bottom"]:
            raw = stored_bytes[lg["token_id"]]
            assert lg["token_bytes"] == (None if _utf8(raw) else raw.hex())
            seen_bytes += lg["token_bytes"] is not None
        for ex in unit["top"] + [e for b in unit["bands"] for e in b["examples"]]:
            assert ex["token_bytes"] == [
                None if _utf8(stored_bytes[i]) else stored_bytes[i].hex() for i in ex["token_ids"]
            ]
    assert seen_bytes > 0  # the logit tables of the tiny model do hold byte tokens
    seq = client.get(f"/api/{M}/sequences/0").json()
    assert len(seq["token_bytes"]) == len(seq["token_ids"])


def test_logit_table_shows_bytes_and_ids(client, stored_bytes):
    for index in range(64):
        unit = client.get(f"/api/{M}/1-mlp/{index}").json()
        if any(lg["token_bytes"] for lg in unit["logits"]["top"]):
            break
    soup = BeautifulSoup(client.get(f"/{M}/1-mlp/{index}").text, "html.parser")
    cells = soup.select(".top-logits code.tok")
    assert [int(c["title"].removeprefix("id ")) for c in cells] == [lg["token_id"] for lg in unit["logits"]["top"]]
    assert any(lg["token_bytes"] for lg in unit["logits"]["top"])
    for cell, lg in zip(cells, unit["logits"]["top"]):
        # Python's own UTF-8 decoder finds the bytes that are no character.
        text = stored_bytes[lg["token_id"]].decode("utf-8", errors="actscope-test-hex")
        # Control characters other than newline and tab show as their byte too.
        want = "".join(f"<0x{ord(c):02X}>" if ord(c) < 0x20 and c not in "\n\t" or c == "\x7f" else c for c in text)
        assert cell.get_text() == json.dumps(want, ensure_ascii=False)
        assert "\ufffd" not in cell.get_text()


def test_labels_and_clusters_in_rendered_spans():
    from actscope.app.token_html import TokenTable, label, tokens_html

    assert label(b"\xc3") == "<0xC3>"
    assert label(b" \xe6\x97") == " <0xE6><0x97>"
    assert label(b"\x1c") == "<0x1C>" and label("\u200b".encode()) == "<U+200B>"
    assert label("é\n".encode()) == "é\n"
    table = TokenTable([b"<|bos|>", b"caf", b"\xc3", b"\xa9", b" \xe6\x97", b"\xa5", b"\xc3", b"x\n    "])
    ids = [0, 1, 2, 3, 4, 5, 6, 7]
    acts = [9.0, 0.1, 0.5, -1.0, 0.25, 0.75, 0.2, 0.3]
    soup = BeautifulSoup(str(tokens_html(table, ids, acts, 1.0, focus=3, bos=True)), "html.parser")
    spans = soup.select(".t")
    assert [token_id_of(s) for s in spans] == ids  # every token keeps its span, in order
    assert [float(s["data-act"]) for s in spans] == acts
    assert [token_of(s) for s in spans[2:4]] == ["<0xC3>", "<0xA9>"]
    groups = soup.select(".chars")
    assert [g.select_one(".chars-text").get_text() for g in groups] == ["é", " 日"]
    assert [[token_id_of(s) for s in g.select(".t")] for g in groups] == [[2, 3], [4, 5]]
    # The focus token inside a group keeps its outline class and its negative tint.
    assert spans[3]["class"] == ["t", "neg", "focus"] and "--a:1.000" in spans[3]["style"]
    # " 日": the space and a third of 日 (2 cells) in the first token, the rest in the second.
    widths = [float(s["style"].split("width:")[1].rstrip("%")) for s in groups[1].select(".t")]
    assert widths == pytest.approx([100 * (1 + 2 * 2 / 3) / 3, 100 * (2 / 3) / 3], abs=0.01)
    # A stray byte stays a token of its own; a newline ends the token's box.
    assert spans[6].get_text() == "<0xC3>" and spans[6].parent == soup.select_one(".toks")
    assert spans[7].get_text() == "x\u21b5" and spans[7].next_sibling.startswith("\n")


def test_spans_of_many_windows_are_those_of_each():
    # windows_html builds a page's examples at once; each must be tokens_html's bytes:
    # tints of negative, huge, NaN and infinite values, focus and BOS, a window with a
    # character split over tokens, and an id past the vocabulary.
    from actscope.app.token_html import TokenTable, Window, tokens_html, windows_html

    table = TokenTable([b"<|bos|>", b"a%s", b"\xc3", b"\xa9", b" b\n", b"<i>", b"\t"])
    nan, inf = float("nan"), float("inf")
    windows = [
        Window([0, 1, 4, 5], [7.0, -0.5, 0.25, 3.0], 2, True),
        Window([1, 5, 6, 1], [nan, -inf, inf, 1e-9], 0, False),
        Window([0, 1], [0.1, 2.0], 0, True),
        Window([1, 2, 3, 5], [0.5, 1.0, -1.0, 0.0], 3, False),
        Window([5, 9, 1], [0.5, 1.0, 1.5], 1, False),
        Window([4, 4], [-0.0, 0.6], None, False),
    ]
    for scale in (2.0, 0.0):
        want = [str(tokens_html(table, w.ids, w.acts, scale, w.focus, w.bos)) for w in windows]
        assert windows_html(table, windows, scale) == want


def test_try_page_tokens_show_bytes_ids_and_one_box_per_newline(client, stored_bytes):
    text = TEXT + "\nx = 1\n    y"
    data = client.get(f"/api/{M}/try", params={"text": text}).json()
    soup = BeautifulSoup(client.get(f"/{M}/try", params={"text": text}).text, "html.parser")
    links = soup.select(".try-tokens a.t")
    assert [token_id_of(a) for a in links] == data["token_ids"]
    for a, tid in zip(links, data["token_ids"]):
        raw = stored_bytes[tid]
        if not _utf8(raw):
            assert a.get_text() == raw.decode("utf-8", errors="actscope-test-hex")
        if b"\n" in raw:  # the box ends with the newline's mark; the line break follows it
            assert "\n" not in a.get_text() and a.get_text().endswith("\u21b5")
            assert a.next_sibling.startswith("\n")
    assert any(b"\n" in stored_bytes[t] for t in data["token_ids"])
