"""Options every command that takes image references shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # imported when a command runs (fast start-up)
    from nydus_compact.image.source import Access

AUTHFILE = typer.Option(
    None, "--authfile", help="Registry credentials file (auth.json / docker config.json shape); default: "
    "$REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, $DOCKER_CONFIG/config.json, ~/.docker/config.json."
)
INSECURE = typer.Option(
    [], "--insecure-registry", help="Registry HOST[:PORT] spoken to over plain HTTP (loopback registries always are). Repeatable."
)


def access(authfile: str | None, insecure: list[str] | None) -> Access:
    from nydus_compact.image.source import Access

    return Access(authfile, list(insecure or []))
