"""Image references as containers-transports(5) spells them (spec oci-image.md §6).

``docker://NAME[:TAG|@sha256:DIGEST]`` — NAME is a docker reference: its first component is a
registry host only if it contains ``.`` or ``:`` or is ``localhost``; otherwise the registry is
docker.io and a single-component name gets ``library/``. No tag and no digest means ``latest``;
tag and digest together are refused (as the docker transport does).

``oci:PATH[:REF]`` — split at the first ``:`` (as containers/image does on Unix); REF is optional.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageError

DOCKER_PREFIX = "docker://"
OCI_PREFIX = "oci:"
DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
REGISTRY_HOST = re.compile(rf"(?:{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
TAG = re.compile(r"[\w][\w.-]{0,127}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# containers/image's oci transport: the REF part of oci:PATH:REF.
LAYOUT_REF = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")


@dataclass(frozen=True)
class DockerRef:
    registry: str  # as written, e.g. "127.0.0.1:5000" or "docker.io"
    repository: str  # e.g. "library/alpine"
    tag: str | None  # None when given by digest
    digest: str | None  # "sha256:..."

    transport = "docker"

    @property
    def reference(self) -> str:
        """What goes after /manifests/ in the registry API."""
        return self.digest or self.tag or "latest"

    @property
    def endpoint(self) -> str:
        return DOCKER_HUB_ENDPOINT if self.registry == DOCKER_HUB else self.registry

    def with_tag(self, tag: str) -> DockerRef:
        return DockerRef(self.registry, self.repository, tag, None)

    def same_repository(self, other: object) -> bool:
        return isinstance(other, DockerRef) and (self.registry, self.repository) == (other.registry, other.repository)

    def __str__(self) -> str:
        where = f"{DOCKER_PREFIX}{self.registry}/{self.repository}"
        return f"{where}@{self.digest}" if self.digest else f"{where}:{self.tag}"


@dataclass(frozen=True)
class LayoutRef:
    path: str  # absolute directory
    tag: str | None

    transport = "oci"
    digest = None

    def with_tag(self, tag: str) -> LayoutRef:
        return LayoutRef(self.path, tag)

    def same_repository(self, other: object) -> bool:
        return isinstance(other, LayoutRef) and self.path == other.path

    def __str__(self) -> str:
        return f"{OCI_PREFIX}{self.path}" + (f":{self.tag}" if self.tag else "")


ImageRef = DockerRef | LayoutRef


def is_image_ref(text: str) -> bool:
    return text.startswith((DOCKER_PREFIX, OCI_PREFIX))


def parse_reference(text: str) -> ImageRef:
    if text.startswith(DOCKER_PREFIX):
        return parse_docker(text[len(DOCKER_PREFIX):], text)
    if text.startswith(OCI_PREFIX):
        return parse_layout(text[len(OCI_PREFIX):], text)
    raise ImageError(f"{text!r}: not an image reference (expected docker://NAME[:TAG|@DIGEST] or oci:DIR[:TAG])")


def parse_docker(name: str, text: str) -> DockerRef:
    def bad(why: str) -> ImageError:
        return ImageError(f"{text}: invalid docker reference: {why}")

    if not name:
        raise bad("empty name")
    if name.startswith("//"):
        raise bad("too many slashes after docker:")
    digest = None
    if "@" in name:
        name, _, digest = name.partition("@")
        if not DIGEST.fullmatch(digest):
            raise bad(f"digest {digest!r} is not sha256: followed by 64 lower-case hex digits")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
        if not TAG.fullmatch(tag):
            raise bad(f"tag {tag!r} is not valid (letters, digits, _ . -, at most 128)")
    if tag is not None and digest is not None:
        raise bad("a tag and a digest together are not supported; give one")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
        if not REGISTRY_HOST.fullmatch(registry):
            raise bad(f"registry host {registry!r} is not valid")
    else:
        registry, repository = DOCKER_HUB, name
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not REPOSITORY.fullmatch(repository):
        raise bad(f"repository {repository!r} must be lower-case components separated by /")
    if len(repository) > 255:
        raise bad("repository name longer than 255 characters")
    if tag is None and digest is None:
        tag = "latest"
    return DockerRef(registry, repository, tag, digest)


def parse_layout(rest: str, text: str) -> LayoutRef:
    path, _, tag = rest.partition(":")
    if not path:
        raise ImageError(f"{text}: invalid oci reference: empty directory")
    if tag and not LAYOUT_REF.fullmatch(tag):
        raise ImageError(f"{text}: invalid oci reference: {tag!r} is not a valid image name (letters, digits, . _ - /)")
    return LayoutRef(str(Path(path).absolute()), tag or None)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost, with or without a port: plain HTTP by default, as Docker does."""
    name = host
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def scheme_for(registry: str, insecure: list[str] | tuple[str, ...] = ()) -> str:
    """http for loopback registries and hosts named with --insecure-registry, else https."""
    if is_loopback(registry) or registry in insecure or registry.partition(":")[0] in insecure:
        return "http"
    return "https"
