"""Neutron's error types, each with its HTTP status and message, raised by model and API alike."""

from __future__ import annotations


class NeutronError(Exception):
    """An error the API renders as {"NeutronError": {"type", "message", "detail"}}."""

    status = 500
    type_name = "NeutronError"
    template = "An unknown exception occurred."

    def __init__(self, message: str | None = None, type_name: str | None = None, **kw: object) -> None:
        self.kw = kw
        self.message = message if message is not None else self.template.format(**kw)
        if type_name:
            self.type_name = type_name
        super().__init__(self.message)

    def body(self) -> dict:
        return {"NeutronError": {"type": self.type_name, "message": self.message, "detail": ""}}


class BadRequest(NeutronError):
    status = 400
    type_name = "HTTPBadRequest"


class InvalidInput(BadRequest):
    type_name = "InvalidInput"
    template = "Invalid input for operation: {error_message}."


class Unauthorized(NeutronError):
    status = 401
    type_name = "HTTPUnauthorized"
    template = "Authentication required"


class Forbidden(NeutronError):
    status = 403
    type_name = "PolicyNotAuthorized"
    template = "rule:{action} is disallowed by policy"


class NotFound(NeutronError):
    status = 404
    type_name = "HTTPNotFound"
    template = "The resource could not be found."


class Conflict(NeutronError):
    status = 409
    type_name = "Conflict"


class PreconditionFailed(NeutronError):
    status = 412
    type_name = "RevisionNumberConstraintFailed"
    template = "Constrained to {filter_rev}, but current revision is {current_rev}"


class ServiceUnavailable(NeutronError):
    status = 503
    type_name = "ServiceUnavailable"


def not_found(type_name: str, label: str, ident: str) -> NotFound:
    """Neutron's <Resource>NotFound, e.g. NetworkNotFound: "Network X could not be found."."""
    return NotFound(f"{label} {ident} could not be found.", type_name=type_name)


def conflict(type_name: str, message: str) -> Conflict:
    return Conflict(message, type_name=type_name)


def bad_request(type_name: str, message: str) -> BadRequest:
    return BadRequest(message, type_name=type_name)


def ip_in_use(net_id: str, ip: str) -> Conflict:
    return conflict("IpAddressInUse", f"Unable to complete operation for network {net_id}. "
                    f"The IP address {ip} is in use.")


def mac_in_use(net_id: str, mac: str) -> Conflict:
    return conflict("MacAddressInUse", f"Unable to complete operation for network {net_id}. "
                    f"The mac address {mac} is in use.")


def ip_generation_failure(net_id: str) -> Conflict:
    return conflict("IpAddressGenerationFailure",
                    f"No more IP addresses available on network {net_id}.")
