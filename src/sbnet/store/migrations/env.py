"""Alembic environment: runs on the connection Store hands over in config.attributes."""

from alembic import context

from sbnet.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
