"""Errors of the image builder."""


class BuildError(Exception):
    """A layer cannot be turned into an image (unsupported file, bad option, ...)."""
