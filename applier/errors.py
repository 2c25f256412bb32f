"""Errors of apply, verify and gc."""


class ApplyError(Exception):
    """Apply refused or failed; nothing half-written is left behind."""
