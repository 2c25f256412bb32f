"""Blob backends: where source blobs are read from and new blobs are written to."""
