"""OCI / Docker manifests and indexes of Nydus images (spec oci-image.md §1-3).

Parsing is strict about what this tool relies on (descriptors with a media type, a sha256
digest and a size) and keeps every other field untouched, so a rewritten manifest carries the
source's ``subject``, annotations and unknown fields over unchanged.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
from dataclasses import dataclass

from .errors import ImageError
from .reference import DIGEST

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
NYDUS_ARTIFACT = "application/vnd.nydus.image.manifest.v1+json"
NYDUS_OS_FEATURE = "nydus.remoteimage.v1"

ANN_BLOB = "containerd.io/snapshot/nydus-blob"
ANN_BOOTSTRAP = "containerd.io/snapshot/nydus-bootstrap"
ANN_FS_VERSION = "containerd.io/snapshot/nydus-fs-version"
ANN_REFERENCE_BLOBS = "containerd.io/snapshot/nydus-reference-blob-ids"
ANN_UNCOMPRESSED = "containerd.io/uncompressed"
ANN_REF_NAME = "org.opencontainers.image.ref.name"

MAX_MANIFEST = 4 << 20


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    raw: dict  # the descriptor as found (annotations, platform, artifactType, ...)

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    @property
    def annotations(self) -> dict:
        value = self.raw.get("annotations")
        return value if isinstance(value, dict) else {}

    @property
    def platform(self) -> dict:
        value = self.raw.get("platform")
        return value if isinstance(value, dict) else {}


def descriptor(raw: object, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise ImageError(f"{where}: expected a descriptor object")
    media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ImageError(f"{where}: descriptor without mediaType")
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise ImageError(f"{where}: digest {digest!r} is not a sha256 digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{where}: descriptor size must be a non-negative integer")
    return Descriptor(media_type, digest, size, raw)


def load_json(data: bytes, where: str) -> dict:
    if len(data) > MAX_MANIFEST:
        raise ImageError(f"{where}: {len(data)} bytes is too large for a manifest")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ImageError(f"{where}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{where}: expected a JSON object")
    return doc


def media_type_of(doc: dict, served: str | None) -> str:
    """The document's own mediaType, else the one it was served with, else guessed from its shape."""
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    if served and served.split(";")[0].strip() in MANIFEST_TYPES + INDEX_TYPES:
        return served.split(";")[0].strip()
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


@dataclass
class Manifest:
    """An image manifest: config + layers, and everything else as found."""

    doc: dict
    media_type: str
    config: Descriptor
    layers: list[Descriptor]

    @classmethod
    def parse(cls, data: bytes, where: str, served: str | None = None) -> Manifest:
        doc, mt, layers = _document(data, where, served, MANIFEST_TYPES, "layers")
        return cls(doc, mt, descriptor(doc.get("config"), f"{where}: config"), layers)

    @property
    def bootstrap_layer(self) -> Descriptor | None:
        """The last layer if it is a Nydus bootstrap layer (as nydusify's FindNydusBootstrapDesc decides)."""
        if not self.layers:
            return None
        last = self.layers[-1]
        if last.media_type in (OCI_LAYER_GZIP, DOCKER_LAYER_GZIP) and last.annotations.get(ANN_BOOTSTRAP) == "true":
            return last
        return None

    @property
    def blob_layers(self) -> list[Descriptor]:
        return self.layers[:-1] if self.bootstrap_layer is not None else list(self.layers)


@dataclass
class Index:
    doc: dict
    media_type: str
    manifests: list[Descriptor]

    @classmethod
    def parse(cls, data: bytes, where: str, served: str | None = None) -> Index:
        return cls(*_document(data, where, served, INDEX_TYPES, "manifests"))


def _document(
    data: bytes, where: str, served: str | None, types: tuple[str, ...], key: str
) -> tuple[dict, str, list[Descriptor]]:
    """A manifest or index: the document, its media type (one of ``types``), the descriptors under ``key``."""
    doc = load_json(data, where)
    mt = media_type_of(doc, served)
    if mt not in types:
        kind = "an image manifest" if key == "layers" else "an index"
        raise ImageError(f"{where}: media type {mt} is not {kind}")
    items = doc.get(key)
    if not isinstance(items, list):
        raise ImageError(f"{where}: no {key} list")
    return doc, mt, [descriptor(d, f"{where}: {key}[{i}]") for i, d in enumerate(items)]


def is_index(data: bytes, served: str | None) -> bool:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and media_type_of(doc, served) in INDEX_TYPES


_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
         "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "i686": "386", "i386": "386"}


def default_platform() -> str:
    machine = _platform.machine().lower()
    return f"linux/{_ARCH.get(machine, machine)}" + ("/v7" if machine == "armv7l" else "")


def parse_platform(text: str) -> tuple[str, str, str | None]:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"--platform {text!r}: expected os/arch[/variant], e.g. linux/amd64")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def platform_matches(desc: Descriptor, wanted: tuple[str, str, str | None]) -> bool:
    p = desc.platform
    os_, arch, variant = wanted
    if p.get("os") != os_ or p.get("architecture") != arch:
        return False
    return variant is None or p.get("variant") in (None, variant)


def is_nydus_entry(desc: Descriptor) -> bool:
    features = desc.platform.get("os.features")
    return desc.raw.get("artifactType") == NYDUS_ARTIFACT or (
        isinstance(features, list) and NYDUS_OS_FEATURE in features
    )


def describe_entry(desc: Descriptor) -> str:
    p = desc.platform
    plat = "/".join(str(p[k]) for k in ("os", "architecture", "variant") if p.get(k)) or "no platform"
    kind = "nydus" if is_nydus_entry(desc) else "index" if desc.media_type in INDEX_TYPES else "image"
    return f"{desc.digest[:19]} ({plat}, {kind})"


def dumps(doc: dict) -> bytes:
    """How this tool serialises a manifest, index or config it writes: fixed, compact, key order kept."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
