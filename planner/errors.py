"""Errors of planning: bad configuration, incompatible inputs, invalid plan files."""


class PlanError(Exception):
    """Planning cannot proceed; the message names the file and what is wrong."""


class ConfigError(PlanError):
    """A compact config (or a flag) has a wrong value."""


class PlanFileError(PlanError):
    """A plan file is unreadable, invalid (with the key path) or stale."""
