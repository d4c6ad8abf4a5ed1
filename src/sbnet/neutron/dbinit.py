"""Create Neutron's tables on a fresh SQLite database (its alembic migrations need MySQL or PostgreSQL).

python -m sbnet.neutron.dbinit sqlite:///path  (in the neutron venv), as Neutron's own unit
tests create their schema: every model's table, from the models' metadata; then the one
piece of data a fresh database gets from a migration, the default security group rule
templates (without them new groups have no egress rules)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import sqlalchemy as sa
from neutron_lib.db import model_base

TEMPLATES = "2023.2/expand/c33da356b165_security_group_default_rules.py"


def default_rule_templates() -> list[dict]:
    """The templates as Neutron's own migration declares them."""
    import neutron.db.migration.alembic_migrations.versions as versions
    path = Path(versions.__path__[0]) / TEMPLATES
    spec = importlib.util.spec_from_file_location("sbnet_sg_templates", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [dict(r) for r in mod.default_template_rules]


def create_schema(url: str) -> None:
    from neutron.db.migration.models import head  # noqa: F401 - imports every Neutron model
    try:
        from networking_sfc.db import flowclassifier_db, sfc_db  # noqa: F401
    except ImportError:
        pass
    meta = model_base.BASEV2.metadata
    engine = sa.create_engine(url)
    meta.create_all(engine)
    attrs, templates = meta.tables["standardattributes"], meta.tables["securitygroupdefaultrules"]
    with engine.begin() as conn:
        if conn.execute(sa.select(sa.func.count()).select_from(templates)).scalar():
            return
        for rule in default_rule_templates():
            res = conn.execute(sa.insert(attrs).values(
                description=rule.pop("description"), resource_type=templates.name))
            conn.execute(sa.insert(templates).values(
                standard_attr_id=res.inserted_primary_key[0], **rule))


if __name__ == "__main__":
    create_schema(sys.argv[1])
