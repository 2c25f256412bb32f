"""Audit reports: what a plan will do and what an apply run did, assembled from the plan file and
the SQLite store as plain data (``views``), drawn as inline SVG (``charts``) and rendered with
jinja2 templates (``render``); and `compact explain` (``explain``)."""
