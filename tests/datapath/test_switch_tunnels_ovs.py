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


@pytest.mark.parametrize("value,typ", [(0xCAFE, 0x80), (0x12345678, 0x05)])
def test_geneve_options_from_tun_metadata_match_ovs(value, typ):
    import re

    from sbnet.datapath.tunnel import TunnelPort
    from sbnet.ovs.dummy import require_ovs
    from tests.datapath.test_tunnel_ovs import BR_MAC, LOCAL4, PEER_MAC, TunnelOVS
    require_ovs()
    tlv = f"{{class=0x0102,type={typ:#x},len=4}}->tun_metadata0"
    table = f"in_port=LOCAL,actions=set_field:0x77->tun_id,set_field:{value:#x}->tun_metadata0,output:10"
    with TunnelOVS(1, bridge="br0") as o:
        o.vsctl("set", "bridge", "br0", f"other-config:hwaddr={BR_MAC}", "--", "add-br", "int-br",
                "--", "set", "bridge", "int-br", "datapath_type=dummy", "fail_mode=secure",
                "--", "add-port", "int-br", "g1", "--", "set", "interface", "g1", "type=geneve",
                "ofport_request=10", "options:remote_ip=203.0.113.10", "options:key=flow")
        o.appctl("netdev-dummy/ip4addr", "br0", f"{LOCAL4}/24")
        o.appctl("ovs/route/add", "203.0.113.0/24", "br0")
        o.appctl("tnl/neigh/set", "br0", "203.0.113.10", PEER_MAC)
        o.ofctl("add-flow", "actions=normal")      # the underlay bridge forwards the result
        o._run(["ovs-ofctl", "add-tlv-map", f"unix:{o.dir}/int-br.mgmt", tlv])
        o._run(["ovs-ofctl", "replace-flows", f"unix:{o.dir}/int-br.mgmt", "-"], stdin=table + "\n")
        frame, flow = _inner("udp", 0, 0, 64)
        trace = o.appctl("ofproto/trace", "int-br", flow)
    m = re.search(r"header\(size=(\d+),.*geneve\((crit,)?vni=(0x[0-9a-f]+),options\(\{class=(0x[0-9a-f]+),"
                  r"type=(0x[0-9a-f]+),len=(\d+),(0x[0-9a-f]+)\}\)\)", trace)
    assert m, trace

    sw = Switch(clock=lambda: 0.0)
    sw.underlay = _underlay()
    sw.underlay.add_neighbour("203.0.113.10", PEER_MAC)
    sw.add_port(100)
    sw.add_tunnel_port(TunnelPort(10, "geneve", remote_ip="203.0.113.10", key="flow"))
    sw.add_tlv_map(tlv)
    sw.load(table)
    sw.process(Batch.from_packets([frame], 0xFFFFFFFE))
    (sent,) = sw.ports[100].take_sent()
    size = len(sent) - len(frame)
    g = sent[14 + 20 + 8:]
    crit = bool(g[1] & 0x40)
    vni = int.from_bytes(g[4:7], "big")
    opt = g[8:8 + 4 + 4]
    assert (size, crit, vni) == (int(m[1]), bool(m[2]), int(m[3], 16))
    assert int.from_bytes(opt[:2], "big") == int(m[4], 16) and opt[2] == int(m[5], 16)
    assert (opt[3] & 0x1F) * 4 == int(m[6]) and int.from_bytes(opt[4:8], "big") == int(m[7], 16)
