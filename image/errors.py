"""Errors of the image flow."""


class ImageError(Exception):
    """An image cannot be resolved, read or published (one line, names the reference)."""


class ImageUsageError(ImageError):
    """The command line names images in a way that cannot work (exit 64, like any usage error)."""
