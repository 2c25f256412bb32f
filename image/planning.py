"""`compact plan` on image references: resolve each source, bring its bootstrap next to the plan,
and decide the targets (spec oci-image.md; issue 12 "Interface")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nydus_compact.backends.base import BlobBackend
from nydus_compact.backends.config import BackendConfig
from nydus_compact.planner.plan import ImageSource
from nydus_compact.safeio import atomic_write_bytes, check_regular

from .errors import ImageError, ImageUsageError
from .layout import LayoutRepo
from .reference import DockerRef, ImageRef, LayoutRef, parse_reference
from .source import Access, Repo, open_repo, read_bootstrap, resolve

DEFAULT_SUFFIX = "-compact"


def work_dir(plan_path: Path) -> Path:
    """Where an image plan keeps source bootstraps, new bootstraps and staged blobs: PLAN.image/."""
    return plan_path.with_name(plan_path.stem + ".image")


def target_for(source: ImageRef, text: str, suffix: str | None, target: str | None) -> ImageRef:
    if target is not None:
        ref = parse_reference(target)
        if ref.digest is not None:
            raise ImageUsageError(f"--target {target}: a target is published under a tag, not a digest")
        if isinstance(ref, LayoutRef) and ref.tag is None:
            raise ImageUsageError(f"--target {target}: name the tag to publish, oci:DIR:TAG")
        return ref
    if source.digest is not None or source.tag is None:
        raise ImageUsageError(f"{text} names no tag to derive the target from: give --target docker://…:TAG or oci:DIR:TAG")
    return source.with_tag(source.tag + (DEFAULT_SUFFIX if suffix is None else suffix))


@dataclass
class ImageInputs:
    bootstraps: list[Path]
    sources: list[ImageSource]
    backend_config: BackendConfig  # fingerprint of where blobs are read (no secrets)
    backend: BlobBackend


def check_arguments(refs: list[str], target: str | None, target_suffix: str | None) -> None:
    if target is not None and target_suffix is not None:
        raise ImageUsageError("--target and --target-suffix exclude each other: --target names one image's "
                              "target, --target-suffix derives every source's")
    if target is not None and len(refs) > 1:
        raise ImageUsageError("--target names the target of one source; with several use --target-suffix")
    if target_suffix is not None and not target_suffix:
        raise ImageUsageError("--target-suffix must not be empty (the target would be the source)")


def prepare_images(
    refs: list[str], plan_path: Path, access: Access, *, target: str | None, target_suffix: str | None,
    platform: str | None,
) -> ImageInputs:
    check_arguments(refs, target, target_suffix)
    parsed = [parse_reference(r) for r in refs]
    targets = [target_for(ref, text, target_suffix, target) for ref, text in zip(parsed, refs)]
    first = parsed[0]
    for ref in parsed[1:]:
        if not ref.same_repository(first):
            raise ImageError(f"{ref}: a fleet plan reads blobs from one repository, and {first} is in another")
    repo = open_repo(first, access)
    work = work_dir(plan_path)
    work.mkdir(parents=True, exist_ok=True)
    boots, sources = [], []
    seen: set[str] = set()
    for ref, tgt in zip(parsed, targets):
        resolved = resolve(repo, ref, platform)
        if resolved.manifest_digest in seen:
            raise ImageError(f"{ref}: names the same image as another source ({resolved.manifest_digest})")
        seen.add(resolved.manifest_digest)
        boot = work / f"source-{resolved.manifest_digest.split(':')[1][:16]}.boot"
        check_regular(boot, f"the bootstrap of {ref}")
        atomic_write_bytes(boot, read_bootstrap(repo, resolved))
        boots.append(boot)
        sources.append(ImageSource(
            source=str(ref), digest=resolved.digest, manifest_digest=resolved.manifest_digest,
            platform=resolved.platform, target=str(tgt),
            source_scheme=access.scheme(ref) if isinstance(ref, DockerRef) else None,
            target_scheme=access.scheme(tgt) if isinstance(tgt, DockerRef) else None,
        ))
    return ImageInputs(boots, sources, backend_config_of(first, repo, access), blob_backend(repo))


def backend_config_of(ref: ImageRef, repo: Repo, access: Access) -> BackendConfig:
    """The fingerprint of the source repository in the shape backend configs have (no secrets)."""
    if isinstance(repo, LayoutRepo):
        return BackendConfig("localfs", {"dir": str(repo.blobs)}, str(ref))
    assert isinstance(ref, DockerRef)
    return BackendConfig("registry", {"scheme": repo.scheme, "host": repo.host, "repo": repo.repo}, str(ref))


def blob_backend(repo: Repo) -> BlobBackend:
    return repo.blob_backend() if isinstance(repo, LayoutRepo) else repo


def require_all_blobs(plan) -> None:  # type: ignore[no-untyped-def]
    """Every blob an image's bootstrap names must be in its repository (layers and reference blobs)."""
    missing = [b.blob_id for b in plan.blobs if b.observed_size is None]
    if missing:
        where = plan.backend.get("repo") or plan.backend.get("dir")
        raise ImageError(
            f"blob {missing[0]} that the bootstrap references is missing from {where}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
