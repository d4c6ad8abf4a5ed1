"""Writing one change to sbnet's copy after Neutron committed it; failures are left to the maintenance task."""

from __future__ import annotations

from oslo_log import log

from sbnet.neutron.config import southbound
from sbnet.southbound.client import SouthboundError

LOG = log.getLogger(__name__)


def put(typ: str, body: dict) -> str | None:
    """Neutron has committed `body`: write it to the copy.  An unreachable or refusing sbnet
    must not undo Neutron's commit (ML2 would delete the resource), so it is logged, and the
    maintenance task writes it later."""
    try:
        outcome = southbound().put(typ, body)
    except SouthboundError as exc:
        LOG.warning("sbnet: %s %s not written (%s); the maintenance task will", typ,
                    body.get("id"), exc)
        return None
    if outcome == "stale":
        LOG.debug("sbnet: %s %s revision %s is older than the copy", typ, body.get("id"),
                  body.get("revision_number"))
    return outcome


def delete(typ: str, ident: str) -> None:
    try:
        southbound().delete(typ, ident)
    except SouthboundError as exc:
        LOG.warning("sbnet: %s %s not deleted (%s); the maintenance task will", typ, ident, exc)
