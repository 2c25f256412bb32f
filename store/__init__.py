"""The SQLite store: schema and every SQL statement of nydus-compact live here."""
