"""schemathesis against the OpenAPI document: no generated request may get a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from apihelpers import ADMIN
from sbnet.api import create_app

APP = create_app("sqlite://")
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    response = case.call(headers=ADMIN)
    case.validate_response(response, checks=[not_a_server_error])
