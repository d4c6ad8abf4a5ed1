"""The Neutron v2.0 REST API: app factory, one router module per resource family."""

from sbnet.api.app import create_app

__all__ = ["create_app"]
