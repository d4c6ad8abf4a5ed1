"""A host agent's holds on arriving VIFs across a restart: what its predecessor held for a migration that is over is released."""

from __future__ import annotations

from types import SimpleNamespace

from sbnet.agent.migration import MigrationDuty
from sbnet.datapath.afpacket import AfPacketDatapath
from sbnet.datapath.switch import Switch


def test_a_restarted_agent_releases_the_holds_of_migrations_that_are_over():
    dp = AfPacketDatapath(Switch("h3-br"))
    try:
        dp.hold(7, "fa:16:3e:00:00:07")         # the previous agent's, for a port now here
        dp.hold(8, "fa:16:3e:00:00:08")         # the previous agent's, still arriving
        arriving = {"id": "p8", "binding:host_id": "h2", "mac_address": "fa:16:3e:00:00:08"}
        topo = SimpleNamespace(moving_to={"p8": ("h3",)}, ports={"p8": arriving},
                               active_host=lambda p: p["binding:host_id"])
        duty = MigrationDuty("h3", dp, source=None)
        duty.hold(topo, {"p7": 7, "p8": 8})
        assert dp.holds()["held"] == {8: "fa:16:3e:00:00:08"}
        assert [(o, w) for o, _, w in dp.holds()["events"]][-2:] == [(7, "released"),
                                                                     (8, "held")]
        # Activated here: the hold goes.
        duty.hold(SimpleNamespace(moving_to={}, ports={"p8": arriving},
                                  active_host=lambda p: "h3"), {"p8": 8})
        assert dp.holds()["held"] == {}
    finally:
        dp.close()
