"""nydus-compact: plan/apply compaction of Nydus (RAFS v5/v6) images.

The repository keeps one folder per responsibility at its root (planner/, applier/, store/, ...);
pyproject.toml maps each of them under this one import name so the wheel installs nothing else
at the top level of site-packages.
"""

from __future__ import annotations

import functools


@functools.cache
def version() -> str:
    """The installed distribution's version (plans and apply results record it)."""
    # importlib.metadata costs ~20 ms to import: only what needs the version pays for it.
    from importlib import metadata

    try:
        return metadata.version("nydus-compact")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        return "0+unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
