"""Jinja2 templates of the plan file and reports (package data)."""
