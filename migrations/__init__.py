"""Numbered SQL migrations of the metadata db, applied in order at startup."""
