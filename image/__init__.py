"""Nydus images as OCI artifacts: references, registry and OCI-layout sources and destinations,
the bootstrap layer, and publishing a compacted image (spec oci-image.md)."""
