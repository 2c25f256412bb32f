"""Errors of apply, verify and gc."""


class ApplyError(Exception):
    """Apply refused or failed; nothing half-written is left behind."""


class SourceCorruptError(ApplyError):
    """A source chunk read for copying does not match its digest: nothing of this apply is published."""


class ApplyCancelled(ApplyError):
    """A copy stopped because another part of the same apply failed or was interrupted."""
