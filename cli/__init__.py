"""The `compact` command line."""
