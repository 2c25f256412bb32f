"""Planning: the compaction policy (pure decisions) and the plan file."""

from importlib import metadata

try:
    __version__ = metadata.version("nydus-compact")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
