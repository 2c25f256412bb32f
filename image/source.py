"""Opening a reference's repository (registry with credentials, or OCI layout) and resolving a
reference to its Nydus manifest, through an index if the tag names one (spec oci-image.md §3)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from .auth import find_credentials
from .errors import ImageError
from .layout import LayoutRepo
from .manifest import (
    MANIFEST_TYPES,
    Descriptor,
    Index,
    Manifest,
    default_platform,
    describe_entry,
    is_index,
    is_nydus_entry,
    parse_platform,
    platform_matches,
    sha256_digest,
)
from .reference import DockerRef, ImageRef, LayoutRef, scheme_for
from .registry import RegistryRepo

Repo = RegistryRepo | LayoutRepo


@dataclass
class Access:
    """How to reach registries: auth file, hosts that speak plain HTTP."""

    authfile: str | None = None
    insecure: list[str] = field(default_factory=list)

    def scheme(self, ref: DockerRef) -> str:
        return scheme_for(ref.registry, self.insecure)


def open_repo(ref: ImageRef, access: Access, *, scheme: str | None = None, create: bool = False,
              mount_from: ImageRef | None = None) -> Repo:
    if isinstance(ref, LayoutRef):
        return LayoutRepo(ref.path, create=create)
    creds = find_credentials(ref.registry, ref.repository, access.authfile)
    for w in creds.warnings:
        print(f"compact: warning: {w}", file=sys.stderr)
    scopes: tuple[str, ...] = ()
    if isinstance(mount_from, DockerRef) and mount_from.registry == ref.registry and mount_from.repository != ref.repository:
        scopes = (f"repository:{mount_from.repository}:pull",)
    return RegistryRepo(scheme or access.scheme(ref), ref.endpoint, ref.repository, auth=creds.auth, extra_scopes=scopes)


@dataclass
class Resolved:
    ref: ImageRef
    digest: str  # what the reference names: the index's digest if it is an index
    manifest_digest: str
    manifest: Manifest
    manifest_bytes: bytes
    index: Index | None = None
    index_bytes: bytes | None = None
    entry: Descriptor | None = None  # the index entry of the nydus manifest

    @property
    def platform(self) -> str | None:
        if self.entry is None:
            return None
        p = self.entry.platform
        return "/".join(str(p[k]) for k in ("os", "architecture", "variant") if p.get(k)) or None


def fetch_manifest(repo: Repo, ref: ImageRef, reference: str | None) -> tuple[bytes, str | None, str]:
    got = repo.get_manifest(reference)
    what = str(ref) if reference in (None, ref.digest, getattr(ref, "tag", None)) else f"{ref} ({reference})"
    if got is None:
        raise ImageError(f"{what}: no such image in {repo.location()}")
    data, served = got
    digest = sha256_digest(data)
    if reference is not None and reference.startswith("sha256:") and digest != reference:
        raise ImageError(f"{what}: the manifest served has digest {digest}, not the one asked for")
    return data, served, digest


def resolve(repo: Repo, ref: ImageRef, platform: str | None = None) -> Resolved:
    reference = ref.digest or ref.tag
    data, served, digest = fetch_manifest(repo, ref, reference)
    if not is_index(data, served):
        manifest = Manifest.parse(data, str(ref), served)
        _require_nydus(manifest, ref)
        return Resolved(ref, digest, digest, manifest, data)
    index = Index.parse(data, str(ref), served)
    wanted = parse_platform(platform or default_platform())
    candidates = [e for e in index.manifests if e.media_type in MANIFEST_TYPES]
    marked = [e for e in candidates if is_nydus_entry(e) and platform_matches(e, wanted)]
    for entry in marked + [e for e in candidates if e not in marked and (platform_matches(e, wanted) or not e.platform)]:
        mdata, mserved, mdigest = fetch_manifest(repo, ref, entry.digest)
        manifest = Manifest.parse(mdata, f"{ref} ({entry.digest})", mserved or entry.media_type)
        if manifest.bootstrap_layer is not None:
            return Resolved(ref, digest, mdigest, manifest, mdata, index, data, entry)
    held = ", ".join(describe_entry(e) for e in index.manifests) or "nothing"
    raise ImageError(
        f"{ref}: the index holds no nydus image for {'/'.join(p for p in wanted if p)}; it holds: {held}"
        " (choose another with --platform os/arch[/variant])"
    )


def _require_nydus(manifest: Manifest, ref: ImageRef) -> None:
    if manifest.bootstrap_layer is None:
        raise ImageError(
            f"{ref}: not a nydus image: its last layer is not a nydus bootstrap layer "
            "(tar+gzip annotated containerd.io/snapshot/nydus-bootstrap)"
        )


def read_bootstrap(repo: Repo, resolved: Resolved) -> bytes:
    from .bootlayer import MAX_BOOTSTRAP, extract_bootstrap

    layer = resolved.manifest.bootstrap_layer
    assert layer is not None
    data = repo.blob_bytes(layer.hex, MAX_BOOTSTRAP)
    if sha256_digest(data) != layer.digest:
        raise ImageError(f"{resolved.ref}: bootstrap layer {layer.digest} does not match its digest")
    return extract_bootstrap(data, f"{resolved.ref}: bootstrap layer {layer.digest[:19]}")


def tag_digest(repo: Repo, ref: ImageRef) -> str | None:
    """Digest of what the tag names now, None if the tag does not exist."""
    tag = ref.tag
    got = repo.get_manifest(tag)
    return sha256_digest(got[0]) if got is not None else None
