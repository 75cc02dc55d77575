"""The built wheel: one top-level import name, `actscope`, no build warnings, and it
imports where it is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """(wheel file, build output), built from a copy of the checkout (with the front-end
    files `make install` fetched), so the build leaves nothing in the repository."""
    source = tmp_path_factory.mktemp("source") / "actscope"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "static" / "vendor", source / "static" / "vendor")
    out = tmp_path_factory.mktemp("dist")
    # As a user's shell builds it: PYTHONDONTWRITEBYTECODE only makes setuptools say it skips byte-compiling.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = out.glob("actscope-*.whl")
    return built, result.stdout + result.stderr


def test_wheel_holds_actscope_alone(wheel):
    built, _ = wheel
    with zipfile.ZipFile(built) as archive:
        names = archive.namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"actscope", built.name.split("-py3")[0] + ".dist-info"}
    for needed in (
        "actscope/indexer/run.py",
        "actscope/indexer/kinds/neuron.py",
        "actscope/app/server.py",
        "actscope/app/templates/unit.html",
        "actscope/app/static/style.css",
        "actscope/app/static/vendor/htmx.min.js",
        "actscope/indexer/bundled/default/model/model.safetensors",
        "actscope/indexer/bundled/default/saes/res1-topk/cfg.json",
        "actscope/py.typed",
    ):
        assert needed in names, needed


def test_wheel_builds_without_warnings(wheel):
    _, output = wheel
    warnings = [line for line in output.splitlines() if "warn" in line.lower()]
    assert warnings == []


def test_wheel_imports_in_a_fresh_environment(wheel, tmp_path):
    built, _ = wheel
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(built)], check=True, timeout=300
    )
    script = (
        "import actscope, actscope.indexer, actscope.app\n"
        "from actscope.indexer import bundled\n"
        "print(actscope.__version__, actscope.indexer.__file__, bundled.model_dir('toy-2l'))"
    )
    result = subprocess.run(
        [str(python), "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True
    )
    version, package, model_dir = result.stdout.split()
    assert version == actscope_version()
    assert Path(package).is_relative_to(venv) and Path(model_dir).is_relative_to(venv)


def actscope_version() -> str:
    from importlib.metadata import version

    return version("actscope")
