"""nydus-compact: plan/apply compaction of Nydus (RAFS v5/v6) images.

The repository keeps one folder per responsibility at its root (planner/, applier/, store/, ...);
pyproject.toml maps each of them under this one import name so the wheel installs nothing else
at the top level of site-packages.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("nydus-compact")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0+unknown"
