"""Errors of blob backends."""


class BackendError(Exception):
    """A blob cannot be found, sized or read, or the backend config is wrong."""


class BlobNotFoundError(BackendError):
    """The backend answered, and has no blob with this id (unlike an unreachable or refusing backend)."""
