"""Alembic migrations of the sbnet store, applied programmatically by Store at startup."""
