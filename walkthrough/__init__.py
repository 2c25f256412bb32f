"""`compact demo`: the whole workflow (build, plan, apply, verify, report) on the bundled sample image."""
