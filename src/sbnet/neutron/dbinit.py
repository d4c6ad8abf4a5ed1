"""Create Neutron's tables on a fresh SQLite database (its alembic migrations need MySQL or PostgreSQL).

python -m sbnet.neutron.dbinit sqlite:///path  (in the neutron venv), as Neutron's own unit
tests create their schema: every model's table, from the models' metadata."""

from __future__ import annotations

import sys

from neutron_lib.db import model_base
from sqlalchemy import create_engine


def create_schema(url: str) -> None:
    from neutron.db.migration.models import head  # noqa: F401 - imports every Neutron model
    try:
        from networking_sfc.db import flowclassifier_db, sfc_db  # noqa: F401
    except ImportError:
        pass
    model_base.BASEV2.metadata.create_all(create_engine(url))


if __name__ == "__main__":
    create_schema(sys.argv[1])
