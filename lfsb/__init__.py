"""lfsb: a backup server for SQLite databases replicated by LiteFS."""
