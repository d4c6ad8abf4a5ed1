"""The [sbnet] options of neutron.conf / ml2_conf.ini, and the one Southbound client they make."""

from __future__ import annotations

from oslo_config import cfg

from sbnet.southbound.client import Southbound

OPTS = [
    cfg.StrOpt("url", default="http://127.0.0.1:9696",
               help="sbnet's API (sbnet serve), whose store the sbnet host agents follow."),
    cfg.StrOpt("token", secret=True, help="Token for sbnet's API when it requires one."),
    cfg.FloatOpt("timeout", default=10.0, help="Seconds to wait for sbnet's API."),
    cfg.IntOpt("maintenance_interval", default=60, min=1,
               help="Seconds between full comparisons of Neutron with sbnet's copy."),
]

_client: Southbound | None = None


def register() -> None:
    if "sbnet" not in cfg.CONF or "url" not in cfg.CONF.sbnet:
        cfg.CONF.register_opts(OPTS, group="sbnet")


def southbound() -> Southbound:
    global _client
    register()
    if _client is None:
        c = cfg.CONF.sbnet
        _client = Southbound(c.url, c.token, c.timeout)
    return _client


def list_opts():
    return [("sbnet", OPTS)]
