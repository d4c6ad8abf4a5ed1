"""Live migration on real Linux stacks: a VM moves between hosts by Nova's binding sequence; its
connections through a stateful security group survive with the conntrack handover and stall
without it; a failed migration leaves it working at the source."""

from __future__ import annotations

import time

import pytest

from sbnet.agent.migrationlab import MigrationLab
from sbnet.agent.netns import Topology, require_netns
from sbnet.agent.probes import PingTrain, Stream
from sbnet.cli.migrate import MigrationFailed


@pytest.mark.parametrize("backend", ["reference"])
def test_connection_survives_the_move_and_stalls_without_handover(backend):
    require_netns()
    Topology.cleanup_stale()
    with Topology() as topo:
        lab = MigrationLab.build(topo, backend)
        peer, mover = lab.peer, lab.mover
        try:
            # With the handover: h2 -> h3 while the peer streams to the mover.
            stream = Stream(topo, peer, mover, peer.address, seconds=2.5)
            pings = PingTrain(topo, mover, peer.address, count=200)
            time.sleep(0.8)
            tl, t_move = lab.move("h3")
            res = stream.result()
            gap, replies, sent = pings.gap()
            assert res.error == "" and res.bytes_after(t_move + 0.5), (res.error, tl.lines())
            assert res.gap_at(t_move) < 2.0, tl.lines()
            assert gap < 1.0 and replies >= sent - 50, (gap, replies, sent)
            assert not [c for c in lab.conns("h2") if "tcp" in c]     # the source's went
            p = lab.cloud.api.request("GET", f"ports/{lab.port['id']}")["port"]
            assert p["binding:host_id"] == "h3"
            # Without it: back h3 -> h2, the peer's segments meet a group with no rule for them.
            lab.handover(False)
            stream = Stream(topo, peer, mover, peer.address, port=5002, seconds=2.0, idle=1.0)
            time.sleep(0.8)
            tl, t_move = lab.move("h2")
            res = stream.result()
            assert res.received and res.marks[0] < t_move, res.error     # it ran before
            # Whether it then stalls is a race (who speaks first after the switch-over):
            # bench/bench_migration.py measures what the handover saves; no assertion here.
            # A failed migration: the destination never activates, the binding is deleted.
            lab.handover(True)
            stream = Stream(topo, peer, mover, peer.address, port=5003, seconds=1.5)
            time.sleep(0.5)
            with pytest.raises(MigrationFailed):
                lab.move("h3", fail=True)
            t_abort = time.monotonic()
            res = stream.result()
            assert res.error == "" and res.bytes_after(t_abort + 0.3), (res.error, t_abort)
            assert any("dport=5003" in c for c in lab.conns("h2"))
            # What h3 imported for the migration that never happened went again.
            time.sleep(0.5)
            assert not [c for c in lab.conns("h3") if "dport=5003" in c]
        finally:
            lab.close()
