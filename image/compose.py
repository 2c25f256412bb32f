"""The documents of a Nydus image, as pure functions (spec oci-image.md §1-2): layer descriptors,
the bootstrap layer's annotations, the config with its diff ids, the manifest. The same inputs
give the same bytes."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

from .bootlayer import build_bootstrap_layer
from .manifest import (
    ANN_BLOB,
    ANN_BOOTSTRAP,
    ANN_FS_VERSION,
    ANN_REFERENCE_BLOBS,
    ANN_UNCOMPRESSED,
    NYDUS_BLOB,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    dumps,
    sha256_digest,
)


@dataclass
class Blob:
    """A document this tool writes, with its digest."""

    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def descriptor(self, **extra: object) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data), **extra}


@dataclass
class Composed:
    bootstrap_layer: Blob
    config: Blob
    manifest: Blob
    layers: list[str]  # blob ids that are layers, in blob-table order
    reference_blobs: list[str]  # blob ids of the table that are not layers


def blob_descriptor(blob_id: str, size: int) -> dict:
    return {"mediaType": NYDUS_BLOB, "digest": f"sha256:{blob_id}", "size": size, "annotations": {ANN_BLOB: "true"}}


def compose(
    bootstrap: bytes,
    fs_version: int,
    table: list[str],
    sizes: dict[str, int],
    *,
    base_manifest: dict,
    base_config: dict,
    source_layers: dict[str, dict] | None = None,
    source_bootstrap_layer: dict | None = None,
    was_reference: set[str] | frozenset[str] = frozenset(),
) -> Composed:
    """The image of a bootstrap whose blob table is ``table``.

    A table blob is a layer unless the source image kept it as a reference blob (chunk dict,
    ``nydus-reference-blob-ids``); a source layer's descriptor is carried over as it was.
    """
    source_layers = source_layers or {}
    layers = [b for b in dict.fromkeys(table) if b not in was_reference]
    references = [b for b in dict.fromkeys(table) if b in was_reference]
    layer_descs = [copy.deepcopy(source_layers[b]) if b in source_layers else blob_descriptor(b, sizes[b]) for b in layers]

    layer_bytes, diff_id = build_bootstrap_layer(bootstrap)
    boot_src = source_bootstrap_layer or {}
    annotations = dict(boot_src.get("annotations") or {})
    annotations[ANN_BOOTSTRAP] = "true"
    annotations[ANN_FS_VERSION] = str(fs_version)
    annotations[ANN_UNCOMPRESSED] = diff_id
    if references:
        annotations[ANN_REFERENCE_BLOBS] = json.dumps(references, separators=(",", ":"))
    else:
        annotations.pop(ANN_REFERENCE_BLOBS, None)
    boot_blob = Blob(layer_bytes, boot_src.get("mediaType") or OCI_LAYER_GZIP)
    boot_desc = {**{k: v for k, v in boot_src.items() if k not in ("mediaType", "digest", "size", "annotations")},
                 **boot_blob.descriptor(annotations=annotations)}

    config = copy.deepcopy(base_config)
    rootfs = config.get("rootfs") if isinstance(config.get("rootfs"), dict) else {}
    config["rootfs"] = {**rootfs, "type": "layers", "diff_ids": [d["digest"] for d in layer_descs] + [diff_id]}
    config_blob = Blob(dumps(config), (base_manifest.get("config") or {}).get("mediaType") or OCI_CONFIG)

    manifest = copy.deepcopy(base_manifest)
    old_config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    manifest["config"] = {**old_config, **config_blob.descriptor()}
    manifest["layers"] = layer_descs + [boot_desc]
    media_type = manifest.get("mediaType") or "application/vnd.oci.image.manifest.v1+json"
    return Composed(boot_blob, config_blob, Blob(dumps(manifest), media_type), layers, references)
