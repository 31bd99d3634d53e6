"""Alembic migrations of the market server's database (``server.migrate`` runs them)."""
