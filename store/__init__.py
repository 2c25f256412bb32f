"""The SQLite store: schema and every SQL statement of nydus-compact live here."""

from pathlib import Path


def default_state(plan_path: Path) -> Path:
    """The store lives next to the plan: plan.yaml -> plan.state.sqlite (./plan.state.sqlite
    for a plan written to stdout, `-o -`)."""
    if str(plan_path) == "-":
        return Path("plan.state.sqlite")
    return plan_path.with_name(plan_path.stem + ".state.sqlite")
