"""Imports every command module so that each registers itself on the app."""

from . import inspect_cmd  # noqa: F401
