"""Persistence: SQLAlchemy tables, transactions, the global revision and the change feed."""

from sbnet.store.db import Store, Tx

__all__ = ["Store", "Tx"]
