"""Applying a plan: writing new blobs and the new bootstrap, resumably."""
