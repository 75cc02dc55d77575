"""Where the templates and static files are.

Installed, they are the packages `actscope.app.templates` and `actscope.app.static` (see pyproject). Run
from a source checkout (`python -m ...` in the repository), they are the top-level
`templates/` and `static/` folders.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def resource_dir(name: str) -> Path:
    installed = Path(str(files("actscope.app") / name))
    if installed.is_dir():
        return installed
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    raise RuntimeError(f"actscope is missing its {name} folder (reinstall it)")
