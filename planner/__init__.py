"""Planning: the compaction policy (pure decisions) and the plan file."""
