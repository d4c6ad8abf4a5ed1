"""Tunnel ports of the whole switch vs OVS 3.1's native tunnel ports: the same table and packet give the same tnl_push header."""

from __future__ import annotations

import pytest

from sbnet.datapath import odp
from sbnet.datapath.batch import Batch
from sbnet.datapath.switch import Switch
from tests.datapath.test_tunnel_ovs import (CONFIGS, N_PORTS, _inner, _our_header, _ovs_header,
                                           _underlay, ovs)  # noqa: F401  (ovs is a fixture)

pytestmark = pytest.mark.ovs


@pytest.mark.parametrize("n", range(N_PORTS))
def test_switch_tunnel_output_matches_ovs(ovs, n):  # noqa: F811
    port, inner_kind, dscp, ecn, ttl, flow_key = CONFIGS[n]
    frame, flow = _inner(inner_kind, dscp, ecn, ttl)
    acts = (f"set_field:{flow_key}->tun_id," if port.key == "flow" else "") + f"output:{port.ofport}"
    table = f"in_port=LOCAL,actions={acts}"
    ovs._run(["ovs-ofctl", "replace-flows", f"unix:{ovs.dir}/int-br.mgmt", "-"], stdin=table + "\n")
    theirs = _ovs_header(ovs.appctl("ofproto/trace", "int-br", flow))

    sw = Switch(clock=lambda: 0.0)
    sw.underlay = _underlay()
    sw.add_port(100)
    sw.add_tunnel_port(port)
    sw.load(table)
    local = 0xFFFFFFFE
    (push,) = sw.trace(local, frame).actions
    assert isinstance(push, odp.TunnelPush) and push.ofport == port.ofport
    sw.process(Batch.from_packets([frame], local))
    (sent,) = sw.ports[100].take_sent()
    assert _our_header(sent, len(frame)) == theirs
