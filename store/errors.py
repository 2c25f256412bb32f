"""Errors of the SQLite store."""


class StoreError(Exception):
    """The state database is missing, locked, corrupt or from an incompatible version."""
