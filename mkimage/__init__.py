"""Builds multi-layer Nydus images from directory trees (test inputs, benchmarks, demo)."""
