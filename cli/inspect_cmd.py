"""`compact inspect` (filled in by the format-layer work)."""
