"""actscope: explore what language-model units (MLP neurons, SAE features) respond to."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("actscope")  # the one source: pyproject's version, via package metadata
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0+source"
