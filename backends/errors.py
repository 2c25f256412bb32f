"""Errors of blob backends."""


class BackendError(Exception):
    """A blob cannot be found, sized or read, or the backend config is wrong."""
