"""th-edit: find and edit low-rank communication channels between attention heads."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("th-edit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
