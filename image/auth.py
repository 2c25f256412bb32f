"""Registry credentials where container tools keep them (spec oci-image.md §4).

Files, first one holding credentials for the registry wins: ``--authfile``,
``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``, ``$DOCKER_CONFIG/config.json``,
``~/.docker/config.json``. All share the shape ``{"auths": {KEY: {"auth": base64(user:pass)}}}``;
KEY is a host (``reg.example.com:5000``), a URL (``https://index.docker.io/v1/``) or, as
containers/image allows, ``host/namespace`` (the longest matching namespace wins).
``credsStore`` / ``credHelpers`` would run external programs: they are reported, not used.

Secrets never leave this module except as the ``auth`` value handed to the HTTP client.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ImageError
from .reference import DOCKER_HUB

MAX_AUTH_FILE = 1 << 20
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}


@dataclass
class Credentials:
    auth: str | None  # base64 user:pass, or None for anonymous access
    source: str | None  # the file it came from (never the secret)
    warnings: list[str] = field(default_factory=list)


def auth_files(authfile: str | Path | None, env: Mapping[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    files: list[Path] = []
    if authfile:
        files.append(Path(authfile))
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    if env.get("DOCKER_CONFIG"):
        files.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    home = env.get("HOME")
    if home:
        files.append(Path(home) / ".docker" / "config.json")
    return files


def find_credentials(
    registry: str, repository: str, authfile: str | Path | None = None, env: Mapping[str, str] | None = None
) -> Credentials:
    warnings: list[str] = []
    if authfile and not Path(authfile).is_file():
        raise ImageError(f"{authfile}: --authfile does not exist or is not a file")
    for path in auth_files(authfile, env):
        doc = _read(path)
        if doc is None:
            continue
        helper = _helper(doc, registry)
        if helper:
            warnings.append(
                f"{path}: credentials for {registry} are kept by the external helper docker-credential-{helper}, "
                "which nydus-compact does not run; put them in an auth file (--authfile) instead"
            )
        entry = _best_entry(doc.get("auths"), registry, repository)
        if entry is None:
            continue
        auth = _entry_auth(entry, path, registry)
        if auth is not None:
            return Credentials(auth, str(path))
    return Credentials(None, None, warnings)


def _read(path: Path) -> dict | None:
    try:
        if not path.is_file():
            return None
        if path.stat().st_size > MAX_AUTH_FILE:
            raise ImageError(f"{path}: auth file larger than 1 MiB")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ImageError(f"{path}: cannot read auth file: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ImageError(f"{path}: auth file is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{path}: auth file must hold a JSON object")
    return doc


def _host_of(key: str) -> tuple[str, str]:
    """(host, namespace) of an ``auths`` key."""
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    host, _, path = key.partition("/")
    path = path.strip("/")
    if path in ("v1", "v2"):
        path = ""
    return host, path


def _same_registry(host: str, registry: str) -> bool:
    if registry == DOCKER_HUB:
        return host in _HUB_ALIASES
    return host == registry


def _best_entry(auths: object, registry: str, repository: str) -> dict | None:
    if not isinstance(auths, dict):
        return None
    best: tuple[int, dict] | None = None
    for key, entry in auths.items():
        if not isinstance(key, str) or not isinstance(entry, dict):
            continue
        host, namespace = _host_of(key)
        if not _same_registry(host, registry):
            continue
        if namespace and not (repository == namespace or repository.startswith(namespace + "/")):
            continue
        score = len(namespace)
        if best is None or score > best[0]:
            best = (score, entry)
    return best[1] if best else None


def _entry_auth(entry: dict, path: Path, registry: str) -> str | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user_pass = base64.b64decode(auth, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError(f"{path}: auths entry for {registry}: `auth` is not base64 of user:pass") from None
        if b":" not in user_pass:
            raise ImageError(f"{path}: auths entry for {registry}: `auth` is not base64 of user:pass")
        return auth
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(password, str) and user:
        return base64.b64encode(f"{user}:{password}".encode()).decode()
    return None


def _helper(doc: dict, registry: str) -> str | None:
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if isinstance(key, str) and _same_registry(_host_of(key)[0], registry) and isinstance(name, str):
                return name
    store = doc.get("credsStore")
    return store if isinstance(store, str) and store else None
