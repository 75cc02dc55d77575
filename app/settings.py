"""Server settings (pydantic-settings): from arguments, or ACTSCOPE_* environment variables."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Bytes of a live request body besides its text (source, index, k, braces and names).
BODY_ENVELOPE = 4096
_ROOT_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)*")


def index_paths(value: object) -> list[Path]:
    """The index files named by `value`: a path, a list of paths, or text with paths
    separated by os.pathsep (":" on Unix, as in PATH). A directory stands for every
    *.duckdb file in it, by name. Each file once, in the order given."""
    if isinstance(value, str):
        parts: list[object] = [p for p in value.split(os.pathsep) if p.strip()]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        parts = [value]
    out: list[Path] = []
    for part in parts:
        path = Path(str(part).strip())
        if path.is_dir():
            found = sorted(path.glob("*.duckdb"))
            if not found:
                raise ValueError(f"{path}: a directory with no *.duckdb index file in it")
            out.extend(found)
        else:
            out.append(path)
    if not out:
        raise ValueError("no index file given")
    # The same file named twice (e.g. alone and through its directory) is served once.
    unique: dict[Path, Path] = {}
    for path in out:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def normalise_root_path(value: str) -> str:
    """A path prefix as the app uses it: "actscope/" and "/actscope" are "/actscope";
    "" and "/" are none (""). ValueError for anything but a plain path."""
    inner = value.strip().strip("/")
    path = "/" + inner if inner else ""
    if not _ROOT_PATH.fullmatch(path):
        raise ValueError(
            f"root path {value!r}: expected a path such as /actscope (letters, digits, '-', '.', '_', '~')"
        )
    return path


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACTSCOPE_")

    # The index files served, each model under its own name: one path, or several
    # (ACTSCOPE_INDEX_FILE: separated by os.pathsep, ":" on Unix); a directory stands
    # for every *.duckdb file in it (see index_paths).
    index_file: Annotated[list[Path], NoDecode]
    device: str = "cpu"
    # The path prefix the site is served under, behind a reverse proxy that strips it
    # ("/actscope"; "" at the root of the host): the ASGI root_path. Every URL the app
    # emits carries it.
    root_path: str = ""
    # Live inference (text typed by visitors). Off: the pages and API still work, the
    # live features answer 503.
    live: bool = True
    # Load the model when the app starts instead of on the first live request.
    preload_live: bool = False
    # At most this many live requests wait for the model; more get 503 at once.
    live_max_waiting: int = 64
    # A live request that cannot start within this many seconds gets 503.
    live_timeout_s: float = 20.0
    # Queued live requests for one source run together in one forward pass, up to this many.
    live_max_batch: int = 8
    # Torch CPU threads for live inference (process-wide; None: leave torch's default).
    # `actscope serve` uses 1: with the web server on the same cores, more threads
    # oversubscribe the CPU and one forward pass can get 50x slower.
    live_threads: int | None = None
    # BLAS threads for numpy's matrix products (None: the library's default). `actscope
    # serve` uses 1: requests run side by side, and products that each spin up every core
    # oversubscribed the CPU (similar lists at 16 clients took seconds).
    blas_threads: int | None = None
    # Text longer than this (characters) is cut before tokenizing; the visitor is told.
    max_text_chars: int = 20_000
    # Cached live results (text, source) -> activations.
    live_cache_size: int = 256
    # What the store keeps of the index in memory (unit data, unit tables, sequences,
    # token search), in MB; what does not fit is read with SQL (store/budget.py).
    resident_mb: float = 1024
    # Rendered unit pages (HTML and JSON) kept in memory, in MB (0: off).
    response_cache_mb: int = 128
    # Rows per page of a source's unit table (the visitor may ask for up to 500).
    page_size: int = 50
    # Serve the new index when a file of index_file changes (rebuilt in place); each
    # worker process polls them every reload_interval_s seconds.
    reload_on_change: bool = False
    reload_interval_s: float = 1.0
    # Request bodies larger than this (bytes) get 413, before they are read. None: the
    # longest accepted text (max_text_chars) JSON-escaped, plus room for the other fields.
    max_body_bytes: int | None = None
    # Live inference each client (IP address) may ask for, in model tokens per minute
    # (0: no limit). Over it: 429 with Retry-After. Per worker process.
    live_tokens_per_minute: int = 120_000  # a default regex hypothesis (256 sequences) is ~33k
    # Proxies (addresses or networks, comma-separated) whose X-Forwarded-For names the
    # client; from any other peer the header is ignored.
    trusted_proxies: Annotated[list[str], NoDecode] = []

    @property
    def body_limit(self) -> int:
        """max_body_bytes, or what the longest accepted text needs: JSON escapes a
        character in at most 12 bytes (one outside the BMP as two \\uXXXX escapes)."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return 12 * self.max_text_chars + BODY_ENVELOPE

    @field_validator("index_file", mode="before")
    @classmethod
    def _expand_index_files(cls, value: object) -> object:
        return index_paths(value)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        from actscope.app.limits import parse_networks

        if isinstance(value, str | list):
            return [str(net) for net in parse_networks(value)]
        return value

    @field_validator("root_path")
    @classmethod
    def _check_root_path(cls, value: str) -> str:
        return normalise_root_path(value)
