"""The management API: what the management functions call (auth, queries, commands, OpenAPI)."""
