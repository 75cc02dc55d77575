"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is parsed, its services wired as documented (index into a named
volume, then serve it), and every command it runs is parsed by the real CLI, so a
renamed command or option fails here rather than in a user's `docker compose up`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
import yaml

from actscope.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def parse_cli(argv: list[str]) -> tuple[str, dict]:
    """Parse `actscope ...` argv with the real click command, without running it."""
    assert argv[0] == "actscope", argv
    group_ctx = click.Context(main, info_name="actscope")  # the group takes no options of its own
    name, command, rest = main.resolve_command(group_ctx, list(argv[1:]))
    assert command is not None, f"unknown command {argv[1:2]}"
    ctx = command.make_context(name, rest, parent=group_ctx)
    return name, ctx.params


def test_services_build_then_serve_one_named_volume(compose):
    services = compose["services"]
    assert set(services) == {"indexer", "app"}
    indexer, app = services["indexer"], services["app"]
    assert indexer["build"] == "."
    assert app["image"] == indexer["image"]  # the app reuses the image the indexer built
    assert app["depends_on"] == {"indexer": {"condition": "service_completed_successfully"}}
    assert "restart" not in indexer  # it must exit for the app to start
    volume = indexer["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]
    assert app["volumes"][0].split(":")[:2] == [volume, "/data"]
    assert app["volumes"][0].endswith(":ro")
    assert any(p.endswith(":8000") for p in app["ports"])


def test_indexer_command_builds_the_demo_index_and_exits(compose):
    name, params = parse_cli(compose["services"]["indexer"]["command"])
    assert name == "demo"
    assert params["build_only"] is True
    assert params["out"] == "/data/demo.duckdb"


def test_app_command_serves_that_index_on_all_interfaces(compose):
    name, params = parse_cli(compose["services"]["app"]["command"])
    assert name == "serve"
    assert params["index_files"] == ("/data/demo.duckdb",)
    assert params["host"] == "0.0.0.0" and params["port"] == 8000


def test_parse_cli_rejects_unknown_options():
    with pytest.raises(click.NoSuchOption):
        parse_cli(["actscope", "demo", "--no-such-option"])
    with pytest.raises(click.UsageError):
        parse_cli(["actscope", "no-such-command"])


def test_dockerfile_default_command_and_torch_pin():
    text = (REPO / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    name, params = parse_cli(cmd)
    assert name == "demo" and params["host"] == "0.0.0.0"
    # The image must install the same torch as pyproject, from the CPU wheel index.
    pin = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"torch=={pin}" in text and "download.pytorch.org/whl/cpu" in text
    # Python minor version of the image = the one the bundled model's stdlib came from.
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)


def test_dockerignore_keeps_the_bundled_weights_and_readme():
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("indexer", "indexer/bundled/default", "README.md", "pyproject.toml"):
        assert needed not in ignored
    assert ".venv" in ignored and "*.duckdb" in ignored


def test_the_image_gets_every_front_end_file_make_install_fetches():
    """The Swagger UI of /docs and htmx: each vendor file the Makefile copies from npm, the
    image's front-end stage copies too."""
    makefile = (REPO / "Makefile").read_text()
    dockerfile = (REPO / "Dockerfile").read_text()
    fetched = set(re.findall(r"node_modules/[\w./-]+", makefile))
    assert {"node_modules/htmx.org/dist/htmx.min.js", "node_modules/swagger-ui-dist/swagger-ui.css"} <= fetched
    assert fetched <= set(re.findall(r"node_modules/[\w./-]+", dockerfile))
