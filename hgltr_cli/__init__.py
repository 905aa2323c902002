"""hgltr: hierarchy-guided long-tail fine-tuning of CLIP, as a plugin-based CLI.

Importing this package is cheap (no torch); heavy modules are imported inside commands.
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("hgltr")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from hgltr_cli.hookspecs import hookimpl  # noqa: E402  (the one name plugins need)

__all__ = ["__version__", "hookimpl"]
