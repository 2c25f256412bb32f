"""Errors of report assembly and `compact explain`."""


class ReportError(Exception):
    """What to report on cannot be found (unknown blob or run, no recorded plan) or is ambiguous."""
