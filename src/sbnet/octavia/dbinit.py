"""Create Octavia's tables on a fresh SQLite database (its alembic migrations need MySQL or PostgreSQL).

python -m sbnet.octavia.dbinit sqlite:///path  (in the octavia venv), as Octavia's own
functional tests make theirs: every model's table from the models' metadata, then the rows
its migrations seed: the lookup tables (statuses, protocols, algorithms, ...) and the
placeholder flavor and availability zone that deleted load balancers point to."""

from __future__ import annotations

import sys

import sqlalchemy as sa
from octavia.common import constants as c
from octavia.db import base_models, models
from sqlalchemy import orm

LOOKUPS = (
    (c.SUPPORTED_PROVISIONING_STATUSES, models.ProvisioningStatus),
    (c.SUPPORTED_HEALTH_MONITOR_TYPES, models.HealthMonitorType),
    (c.SUPPORTED_LB_ALGORITHMS, models.Algorithm),
    (c.SUPPORTED_PROTOCOLS, models.Protocol),
    (c.SUPPORTED_OPERATING_STATUSES, models.OperatingStatus),
    (c.SUPPORTED_SP_TYPES, models.SessionPersistenceType),
    (c.SUPPORTED_AMPHORA_ROLES, models.AmphoraRoles),
    (c.SUPPORTED_LB_TOPOLOGIES, models.LBTopology),
    (c.SUPPORTED_VRRP_AUTH, models.VRRPAuthMethod),
    (c.SUPPORTED_L7RULE_TYPES, models.L7RuleType),
    (c.SUPPORTED_L7RULE_COMPARE_TYPES, models.L7RuleCompareType),
    (c.SUPPORTED_L7POLICY_ACTIONS, models.L7PolicyAction),
    (c.SUPPORTED_CLIENT_AUTH_MODES, models.ClientAuthenticationMode),
)
PLACEHOLDER = "DELETED-PLACEHOLDER"


def create_schema(url: str) -> None:
    engine = sa.create_engine(url)
    base_models.BASE.metadata.create_all(engine)
    with orm.Session(engine) as s, s.begin():
        for names, model in LOOKUPS:
            s.add_all(model(name=name) for name in names)
        s.add(models.FlavorProfile(id=c.NIL_UUID, name=PLACEHOLDER, provider_name=c.DELETED,
                                   flavor_data="{}"))
        s.add(models.AvailabilityZoneProfile(id=c.NIL_UUID, name=PLACEHOLDER,
                                             provider_name=c.DELETED,
                                             availability_zone_data="{}"))
        s.flush()
        s.add(models.Flavor(id=c.NIL_UUID, flavor_profile_id=c.NIL_UUID, name=PLACEHOLDER,
                            enabled=False, description="Placeholder for DELETED LBs with "
                            "DELETED flavors"))
        s.add(models.AvailabilityZone(name=c.NIL_UUID, availability_zone_profile_id=c.NIL_UUID,
                                      enabled=False, description="Placeholder for DELETED LBs "
                                      "with DELETED availability zones"))
    engine.dispose()


if __name__ == "__main__":
    create_schema(sys.argv[1])
