"""Errors of safeio: an output the tool refuses to write."""


class SafeIOError(Exception):
    """Base of safeio's errors; the CLI turns each into one line and exit 1."""


class OutputRefusedError(SafeIOError):
    """An output would replace an input, another output, a special file or a blob the tool cannot attribute."""
