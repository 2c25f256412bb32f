"""Backend configuration files in the shapes nydus accepts (compact.md §5.1).

Accepted, auto-detected:
1. nydus ConfigV2 JSON or TOML: ``{"version": 2, "backend": {"type": T, T: {...}}}`` — also the
   2.2 compact config that carries ``"version": 2``;
2. legacy nydusd v1 JSON: ``{"device": {"backend": {"type": T, "config": {...}}}, "mode": ...}``;
3. the raw per-type object (nydus-image 2.3+ ``--backend-config-file``), with ``--backend-type T``.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import BackendError

MAX_CONFIG_BYTES = 1024 * 1024
SUPPORTED = ("localfs", "registry", "s3", "http-proxy")
KNOWN = ("localfs", "registry", "oss", "s3", "localdisk", "http-proxy")
SECRET_KEYS = frozenset({"auth", "registry_token", "access_key_id", "access_key_secret", "password", "token"})
# Fields that identify where blobs live, for the plan's backend fingerprint.
FINGERPRINT_KEYS = (
    "scheme", "host", "repo", "endpoint", "region", "bucket_name", "object_prefix", "addr", "path", "dir", "alt_dirs",
    "blob_file",
)
# Fingerprint keys holding local paths (a plan stores them relative to itself).
PATH_KEYS = ("dir", "blob_file")
REQUIRED = {"registry": ("host", "repo"), "oss": ("endpoint", "bucket_name"), "s3": ("region", "bucket_name")}


@dataclass(frozen=True)
class BackendConfig:
    type: str
    config: dict
    source: str  # file the config came from, for messages

    def fingerprint(self, path: Callable[[str], str] | None = None) -> dict:
        """Where blobs come from, without any secret: safe for plans, logs and reports.
        ``path`` rewrites localfs paths (a plan stores them relative to the plan file)."""
        out: dict[str, object] = {"type": self.type}
        for key in FINGERPRINT_KEYS:
            if self.config.get(key) not in (None, "", []):
                out[key] = self.config[key]
        out["authenticated"] = any(self.config.get(k) for k in SECRET_KEYS)
        return map_local_paths(out, path) if path is not None else out


def map_local_paths(fingerprint: dict, path: Callable[[str], str]) -> dict:
    """A localfs fingerprint (or config) with ``path`` applied to each of its local paths."""
    if fingerprint.get("type") != "localfs":
        return fingerprint
    out = dict(fingerprint) | {k: path(fingerprint[k]) for k in PATH_KEYS if isinstance(fingerprint.get(k), str)}
    if isinstance(out.get("alt_dirs"), list):
        out["alt_dirs"] = [path(d) for d in out["alt_dirs"]]
    return out


def local_blob_places(
    fingerprint: Mapping, blob_ids: Iterable[str], locate: Callable[[str], Path] = Path
) -> tuple[list[Path], list[Path]]:
    """Of a localfs backend (a config or its fingerprint): the directories it looks blobs up in, and
    every existing file a blob id resolves to there (in any of the dirs, or the one ``blob_file``).
    Nothing for remote backends. ``locate`` turns a stored path into a usable one."""
    if fingerprint.get("type") != "localfs":
        return [], []
    dirs = [locate(d) for d in [fingerprint.get("dir"), *fingerprint.get("alt_dirs", [])] if d]
    files = [locate(fingerprint["blob_file"])] if fingerprint.get("blob_file") else []
    from .localfs import check_blob_id

    for blob_id in dict.fromkeys(blob_ids):
        try:
            check_blob_id(blob_id)
        except BackendError:
            continue  # never a file name in these dirs: localfs refuses such ids
        files += [d / blob_id for d in dirs if (d / blob_id).exists()]
    return dirs, files


def load_backend_config(path: str | Path, backend_type: str | None = None) -> BackendConfig:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise BackendError(f"{path}: backend config is {size} bytes, more than the 1 MiB nydus accepts")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BackendError(f"{path}: cannot read backend config: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BackendError(f"{path}: backend config is not UTF-8 text") from None
    return parse_backend_config(text, str(path), backend_type)


def parse_backend_config(text: str, source: str, backend_type: str | None = None) -> BackendConfig:
    data = _parse_document(text, source)
    if backend_type is not None:
        if backend_type not in KNOWN:
            raise BackendError(f"--backend-type {backend_type!r}: expected one of {', '.join(KNOWN)}")
        btype, cfg = backend_type, data
    elif data.get("version") == 2 and isinstance(data.get("backend"), dict):
        backend = data["backend"]
        btype = backend.get("type")
        cfg = backend.get(btype) if isinstance(btype, str) else None
        if cfg is None:
            raise BackendError(f"{source}: backend.{btype}: missing the section for backend type {btype!r}")
    elif isinstance(data.get("device"), dict) and isinstance(data["device"].get("backend"), dict):
        backend = data["device"]["backend"]
        btype, cfg = backend.get("type"), backend.get("config", {})
        if "mode" not in data:
            raise BackendError(f"{source}: mode: missing (required by nydusd v1 configs)")
    else:
        raise BackendError(
            f"{source}: not a nydus backend config: expected {{\"version\": 2, \"backend\": ...}}, "
            "{\"device\": {\"backend\": ...}}, or a raw backend object with --backend-type"
        )
    if not isinstance(btype, str) or btype not in KNOWN:
        raise BackendError(f"{source}: backend type {btype!r} is unknown (expected one of {', '.join(KNOWN)})")
    if btype not in SUPPORTED:
        raise BackendError(f"{source}: backend type {btype!r} is not supported (supported: {', '.join(SUPPORTED)})")
    if not isinstance(cfg, dict):
        raise BackendError(f"{source}: the {btype} backend config must be an object")
    _validate(btype, cfg, source)
    return BackendConfig(btype, dict(cfg), source)


def _parse_document(text: str, source: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as json_exc:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            raise BackendError(
                f"{source}: neither JSON nor TOML (JSON error at line {json_exc.lineno}: {json_exc.msg})"
            ) from None
    if not isinstance(data, dict):
        raise BackendError(f"{source}: backend config must be an object")
    return data


def _validate(btype: str, cfg: dict, source: str) -> None:
    if btype == "localfs" and not (cfg.get("blob_file") or cfg.get("dir")):
        raise BackendError(f"{source}: localfs backend needs `dir` or `blob_file`")
    for key in REQUIRED.get(btype, ()):
        if not cfg.get(key):
            raise BackendError(f"{source}: {btype} backend needs `{key}`")
    if btype == "http-proxy":
        _validate_http_proxy(cfg.get("addr"), source)
    alt = cfg.get("alt_dirs", [])
    if not isinstance(alt, list) or not all(isinstance(d, str) for d in alt):
        raise BackendError(f"{source}: alt_dirs: expected a list of directory paths")


def _validate_http_proxy(addr: object, source: str) -> None:
    """nydus accepts an http(s):// URL or the absolute path of an existing unix socket."""
    if isinstance(addr, str) and addr.startswith(("http://", "https://")):
        return
    if isinstance(addr, str) and addr.startswith("/"):
        try:
            if stat.S_ISSOCK(os.stat(addr).st_mode):
                return
        except OSError as exc:
            raise BackendError(f"{source}: http-proxy addr {addr}: {exc.strerror or exc}") from None
        raise BackendError(f"{source}: http-proxy addr {addr} is not a unix socket")
    raise BackendError(f"{source}: http-proxy backend needs `addr`: an http(s):// URL or the absolute path of a unix socket")


def localfs_config(blobs_dir: str | Path) -> BackendConfig:
    """The config `--blobs-dir DIR` stands for."""
    return BackendConfig("localfs", {"dir": str(blobs_dir)}, "--blobs-dir")


def open_backend(cfg: BackendConfig):
    """Instantiate the backend a config describes."""
    if cfg.type == "localfs":
        from .localfs import LocalFsBackend

        return LocalFsBackend(
            dir=cfg.config.get("dir") or None,
            alt_dirs=cfg.config.get("alt_dirs", []),
            blob_file=cfg.config.get("blob_file") or None,
        )
    if cfg.type == "registry":
        return _open_registry(cfg)
    if cfg.type == "s3":
        return _open_s3(cfg)
    if cfg.type == "http-proxy":
        return _open_http_proxy(cfg)
    raise BackendError(f"{cfg.source}: backend type {cfg.type!r} is not supported yet")


def _open_registry(cfg: BackendConfig):
    from .registry import RegistryBackend

    c, src = cfg.config, cfg.source
    proxy = _field(c, "proxy", dict, {}, src)
    proxy_url = _field(proxy, "url", str, "", f"{src}: proxy")
    if _field(c, "mirrors", list, [], src):
        raise BackendError(f"{src}: registry mirrors are not supported")
    if proxy.get("use_http"):
        raise BackendError(f"{src}: proxy.use_http is not supported")
    return RegistryBackend(
        _field(c, "scheme", str, "https", src),
        _field(c, "host", str, "", src),
        _field(c, "repo", str, "", src),
        auth=_field(c, "auth", str, "", src) or None,
        registry_token=_field(c, "registry_token", str, "", src) or None,
        proxy=proxy_url or None,
        blob_url_scheme=_field(c, "blob_url_scheme", str, "", src),
        blob_redirected_host=_field(c, "blob_redirected_host", str, "", src),
        **_common(c, src),
    )


def _common(c: dict, src: str) -> dict:
    """The fields every HTTP backend of nydus shares (compact.md §5.2), with nydus's defaults."""
    return {
        "skip_verify": _field(c, "skip_verify", bool, False, src),
        "timeout": _field(c, "timeout", (int, float), 5, src),
        "connect_timeout": _field(c, "connect_timeout", (int, float), 5, src),
        "retry_limit": _field(c, "retry_limit", int, 0, src),
    }


def _open_s3(cfg: BackendConfig):
    # Loaded here so that only s3 users pay for importing the S3 client.
    from .s3 import S3Backend

    c, src = cfg.config, cfg.source
    proxy = _field(c, "proxy", dict, {}, src)
    if _field(c, "mirrors", list, [], src):
        raise BackendError(f"{src}: s3 mirrors are not supported")
    return S3Backend(
        _field(c, "bucket_name", str, "", src),
        _field(c, "region", str, "", src),
        endpoint=_field(c, "endpoint", str, "", src),
        scheme=_field(c, "scheme", str, "https", src),
        object_prefix=_field(c, "object_prefix", str, "", src),
        access_key_id=_field(c, "access_key_id", str, "", src),
        access_key_secret=_field(c, "access_key_secret", str, "", src),
        proxy=_field(proxy, "url", str, "", f"{src}: proxy"),
        **_common(c, src),
    )


def _open_http_proxy(cfg: BackendConfig):
    from .http_proxy import HttpProxyBackend

    c, src = cfg.config, cfg.source
    return HttpProxyBackend(_field(c, "addr", str, "", src), _field(c, "path", str, "", src), **_common(c, src))


def _field(cfg: dict, key: str, kind: type | tuple[type, ...], default, source: str):  # type: ignore[no-untyped-def]
    """``cfg[key]`` if of the expected JSON type, ``default`` if absent or null.

    Errors never echo the value: it may be a secret.
    """
    value = cfg.get(key)
    if value is None:
        return default
    # bool is an int in Python, but `"timeout": true` is a config mistake.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BackendError(f"{source}: `{key}` must be of type {names}")
    return value
