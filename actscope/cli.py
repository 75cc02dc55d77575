"""The `actscope` command: index, merge, serve, demo, train-default.

Heavy libraries (torch, transformer_lens, sae_lens) are imported inside the commands so
`actscope --help` stays instant. Errors caused by user input are printed as one line
and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import os
import sys
from functools import wraps

import click

# Nothing here may block on the Hugging Face Hub when it is unreachable; users with
# Hub access can still set these to 0 explicitly.
for _var in ("WANDB_MODE",):
    os.environ.setdefault(_var, "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def user_errors(func):
    """Print ActscopeError (and other input errors) as `error: ...` and exit 2."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        from actscope.indexer.errors import ActscopeError

        try:
            return func(*args, **kwargs)
        except ActscopeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def parse_window(_ctx, _param, value: str) -> tuple[int, int]:
    try:
        before, after = (int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter("expected BEFORE,AFTER, e.g. 24,8") from None
    if before < 0 or after < 0:
        raise click.BadParameter("token counts must be >= 0")
    return before, after


@click.group()
@click.version_option(package_name="actscope")
def main() -> None:
    """Explore what language-model neurons and SAE features respond to."""


@main.command("index")
@click.option(
    "--model",
    "model",
    required=True,
    help="TransformerLens model name, Hugging Face model directory, or actscope native directory.",
)
@click.option(
    "--name",
    default=None,
    help="The model's name in the site's URLs. Default: the model directory's name (or the official name).",
)
@click.option(
    "--dataset",
    required=True,
    help="Hugging Face dataset name (streamed), local .txt/.jsonl/.parquet files (globs allowed), or a built-in corpus.",
)
@click.option(
    "--out",
    default=None,
    type=click.Path(dir_okay=False),
    help="The DuckDB file to write (not with --shard: `actscope merge` writes it).",
)
@click.option("--text-column", default="text", show_default=True, help="Column holding the text (jsonl, parquet, hub).")
@click.option("--split", default="train", show_default=True, help="Dataset split (hub datasets).")
@click.option(
    "--sae",
    "saes",
    multiple=True,
    help="SAELens SAE directory or RELEASE/SAE_ID (repeatable). The hook comes from the SAE config.",
)
@click.option(
    "--neurons",
    "neuron_hooks",
    multiple=True,
    help="Neuron hook to index (repeatable). Default: blocks.{L}.mlp.hook_post of every layer.",
)
@click.option("--no-neurons", is_flag=True, help="Index no MLP neurons (only SAE features, heads or directions).")
@click.option(
    "--directions",
    "directions",
    multiple=True,
    metavar="N@HOOK",
    help="N random unit directions in HOOK's space, a control (repeatable; HOOK a full hook name, "
    "e.g. 64@blocks.1.mlp.hook_post). Drawn from --seed.",
)
@click.option(
    "--heads",
    "heads",
    multiple=True,
    metavar="METRIC",
    help="Attention-head metric to index (repeatable): a source {L}-attn-METRIC per layer, one unit per head. "
    "max-attn, entropy, result-norm, value-norm, value-weighted-attn, prev-token, induction.",
)
@click.option(
    "--dla",
    is_flag=True,
    help="Also index every neuron and SAE source by its direct effect on the next token's logit "
    "(a twin source SLUG-dla each). Refused for hooks without an output direction (hook_pre, hook_mid).",
)
@click.option("--max-tokens", type=int, default=None, help="Stop after this many tokens fed to the model.")
@click.option("--ctx", type=int, default=128, show_default=True, help="Sequence length, BOS included.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Sequences per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--top-k", type=int, default=20, show_default=True, help="Top examples kept per unit.")
@click.option("--band-size", type=int, default=8, show_default=True, help="Random examples kept per quantile band.")
@click.option(
    "--window",
    default="24,8",
    show_default=True,
    callback=parse_window,
    help="Tokens kept before,after the focus token of each example.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for band sampling, --directions and the reservoir."
)
@click.option(
    "--reservoir",
    type=int,
    default=4096,
    show_default=True,
    help="Token positions, drawn from --seed, where every unit's activation is stored as its fingerprint "
    "(neighbours by correlation); at most 65536, 0 for none.",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@click.option(
    "--checkpoint-every", type=int, default=200, show_default=True, help="Batches between checkpoints (0: never)."
)
@click.option(
    "--max-state-gb",
    type=float,
    default=None,
    help="Accumulator state one pass may hold, in GB: more units than fit are indexed in groups of "
    "whole sources, one pass over the corpus each, into the same file (the plan is printed first).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Index only shard I (from 0) of N contiguous ranges of the corpus, into --state-out; "
    "`actscope merge` writes the index from all N (for Slurm arrays and other schedulers).",
)
@click.option(
    "--state-out",
    default=None,
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="With --shard: the directory every shard of the run writes its state to.",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    metavar="N",
    help="Index N shards as Ray tasks (a local Ray instance, or --ray-address), merged into --out. "
    "Needs pip install 'actscope[ray]'.",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDR",
    help="With --workers: the Ray cluster to run on (default: a local one).",
)
@click.option(
    "--state-dir",
    default=None,
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="With --workers: the directory, on storage every node shares, for the shards' states and checkpoints "
    "(default: FILE.duckdb.shards beside --out; needed with --ray-address).",
)
@user_errors
def index_command(
    shard: str | None,
    state_out: str | None,
    workers: int | None,
    ray_address: str | None,
    state_dir: str | None,
    **options,
) -> None:
    """Index every neuron and SAE feature of a model over a corpus into a DuckDB file."""
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.errors import ActscopeError

    if options.get("max_state_gb") is not None and (shard is not None or workers is not None):
        raise ActscopeError(
            "--max-state-gb runs its groups in one process: it does not go with --shard or --workers yet"
        )
    if shard is not None:
        from actscope.indexer.shards import Shard, check_state_dir, run_shard

        if options["out"] is not None:
            raise ActscopeError(
                "--shard writes the shard's state to --state-out, not an index: leave out --out, and write the "
                "index with actscope merge DIR --out FILE.duckdb once every shard is done"
            )
        if state_out is None:
            raise ActscopeError("--shard needs --state-out DIR, the directory every shard of the run writes to")
        if workers is not None or ray_address or state_dir:
            raise ActscopeError("--shard runs one shard; --workers, --ray-address and --state-dir run them all on Ray")
        part = Shard.parse(shard)
        directory = check_state_dir(state_out, "--state-out")
        config = IndexConfig.from_cli({**options, "out": str(part.sequences_path(directory))})
        click.echo(run_shard(config, part, directory, resume=config.resume))
        return
    if state_out is not None:
        raise ActscopeError("--state-out goes with --shard I/N")
    if options["out"] is None:
        raise ActscopeError("--out FILE.duckdb is needed (or --shard I/N with --state-out DIR)")
    config = IndexConfig.from_cli(options)
    if workers is not None:
        from actscope.indexer.ray_run import run_on_ray
        from actscope.indexer.shards import check_state_dir

        if workers < 1:
            raise ActscopeError("--workers must be at least 1")
        if ray_address and state_dir is None:
            raise ActscopeError(
                "--ray-address needs --state-dir: a directory on storage every node of the cluster shares"
            )
        directory = check_state_dir(state_dir or config.out + ".shards", "--state-dir")
        click.echo(run_on_ray(config, workers, directory, ray_address, owned_dir=state_dir is None))
        return
    if ray_address or state_dir:
        raise ActscopeError("--ray-address and --state-dir go with --workers N")
    from actscope.indexer.run import run_index

    click.echo(run_index(config))


@main.command("merge")
@click.argument("state_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The DuckDB file to write.")
@click.option(
    "--model",
    default=None,
    help="The model's directory on this machine, if not where the shards read it (its files must be the same).",
)
@click.option(
    "--sae",
    "saes",
    multiple=True,
    help="Every SAE's directory on this machine, in the shards' order, if not where they read them (repeatable).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda: for the logit tables.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@user_errors
def merge_command(state_dir: str, out: str, model: str | None, saes: tuple[str, ...], device: str, quiet: bool) -> None:
    """Merge the shard states of STATE_DIR (from `actscope index --shard I/N --state-out STATE_DIR`)
    into one index, the one a single run would write."""
    from actscope.indexer.merge import merge_states

    click.echo(merge_states(state_dir, out, model=model, saes=saes, device=device, quiet=quiet))


ROOT_PATH_HELP = (
    "Serve the site under this path prefix, behind a reverse proxy that strips it (e.g. /actscope). "
    "Default: $ACTSCOPE_ROOT_PATH, or none."
)


def parse_root_path(_ctx, _param, value: str | None) -> str | None:
    if value is None:
        return None
    from actscope.app.settings import normalise_root_path

    try:
        return normalise_root_path(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command("serve")
@click.argument("index_files", nargs=-1, required=True, type=click.Path(), metavar="INDEX...")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="Device for live inference.")
@click.option("--root-path", default=None, metavar="PREFIX", callback=parse_root_path, help=ROOT_PATH_HELP)
@click.option(
    "--reload-on-change",
    is_flag=True,
    help="Serve the new index as soon as a file is rebuilt in place (each worker watches them). "
    "Without it, send SIGHUP to a single-process server to reload.",
)
@user_errors
def serve_command(
    index_files: tuple[str, ...], host: str, port: int, device: str, root_path: str | None, reload_on_change: bool
) -> None:
    """Serve indexes built by `actscope index` in the browser and as a JSON API.

    INDEX is an index file, or a directory: every *.duckdb file in it. Every model of
    every index is served under its own name."""
    from actscope.app.server import serve

    serve(
        list(index_files),
        host=host,
        port=port,
        device=device,
        root_path=root_path,
        reload_on_change=reload_on_change,
    )


@main.command("demo")
@click.option("--out", default="demo.duckdb", show_default=True, type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--rebuild", is_flag=True, help="Rebuild the index even if it is up to date.")
@click.option("--build-only", is_flag=True, help="Build the index if needed, then exit without serving.")
@click.option("--root-path", default=None, metavar="PREFIX", callback=parse_root_path, help=ROOT_PATH_HELP)
@user_errors
def demo_command(out: str, host: str, port: int, rebuild: bool, build_only: bool, root_path: str | None) -> None:
    """Build the demo index of the bundled model (if needed) and serve it."""
    from actscope.indexer.demo import build_demo_index

    build_demo_index(out, rebuild=rebuild)
    if build_only:
        return
    from actscope.app.server import serve

    serve([out], host=host, port=port, device="cpu", root_path=root_path)


@main.command("train-default")
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False),
    help="Where to write the model and SAE (default: the package's bundled folder).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--sae-only",
    is_flag=True,
    help="Keep the tokenizer and model already in the folder (trained with the same seed); re-train only the SAE.",
)
@user_errors
def train_default_command(out: str | None, seed: int, sae_only: bool) -> None:
    """Re-train the bundled toy model, its tokenizer and its SAE from the built-in corpora."""
    from actscope.indexer.bundled.train_model import train_default

    train_default(out_dir=out, seed=seed, sae_only=sae_only)


if __name__ == "__main__":
    main()
