"""Writing a freshly built Nydus image (bootstrap + blob files) as an OCI image layout
(`compact mkimage --output-image oci:DIR:TAG`), the shape nydusify gives a converted image."""

from __future__ import annotations

from pathlib import Path

from .compose import compose
from .errors import ImageError
from .layout import LayoutRepo
from .manifest import OCI_CONFIG, OCI_MANIFEST, default_platform
from .reference import LayoutRef, parse_reference


def write_layout_image(target: str, bootstrap: bytes, fs_version: int, blob_paths: list[Path]) -> str:
    """Publish the image to ``target`` (oci:DIR:TAG); returns the manifest digest."""
    ref = parse_reference(target)
    if not isinstance(ref, LayoutRef) or ref.tag is None:
        raise ImageError(f"--output-image {target}: expected oci:DIR:TAG")
    os_, arch, *variant = default_platform().split("/")
    base_config = {"architecture": arch, "os": os_, **({"variant": variant[0]} if variant else {}),
                   "config": {}, "rootfs": {"type": "layers", "diff_ids": []}}
    base_manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"mediaType": OCI_CONFIG}}
    table = [p.name for p in blob_paths]
    image = compose(bootstrap, fs_version, table, {p.name: p.stat().st_size for p in blob_paths},
                    base_manifest=base_manifest, base_config=base_config)
    repo = LayoutRepo(ref.path, create=True)
    for path in blob_paths:
        repo.put_blob_file(path.name, path)
    for blob in (image.bootstrap_layer, image.config):
        repo.put_blob_bytes(blob.digest.split(":")[1], blob.data)
    platform = {"architecture": arch, "os": os_, **({"variant": variant[0]} if variant else {})}
    repo.put_manifest(image.manifest.data, image.manifest.media_type, ref.tag, platform)
    return image.manifest.digest
