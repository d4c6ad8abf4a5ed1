"""The Prometheus endpoint: parsed by the official client's parser, values equal to the switch's counters."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from sbnet.analytics.metrics import MetricsServer, render
from sbnet.analytics.records import FlowMeter
from sbnet.analytics.replay import replay
from sbnet.analytics.traffic import flow_traffic
from sbnet.datapath.batch import Batch

from tests.analytics.test_records import make_switch

parser = pytest.importorskip("prometheus_client.parser")


def _samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_endpoint_serves_counters_that_match_the_switch():
    pk = flow_traffic(800, ports=(1, 2))
    sw = make_switch()
    meter = FlowMeter(sw, host="compute-1", active_timeout=10.0, idle_timeout=5.0)
    server = MetricsServer(port=0)
    try:
        half = len(pk) // 2
        replay(sw, meter, pk[:half])       # flushes: all exported
        server.update(render(meter))
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics").read().decode()
        s = _samples(body)
        rx = sum(x.value for x in s["sbnet_port_rx_packets_total"])
        assert rx == half
        by_port = {}
        for x in s["sbnet_port_rx_packets_total"]:
            by_port[int(x.labels["port"])] = by_port.get(int(x.labels["port"]), 0) + x.value
        assert by_port[1] == sum(1 for _, f, p in pk[:half] if p == 1 and len(f) > 20)
        assert by_port[2] == sum(1 for _, f, p in pk[:half] if p == 2)
        drops = {x.labels["reason"]: x.value for x in s["sbnet_drops_total"]}
        assert drops == {k: float(v) for k, v in sw.drop_counts().items()}
        assert any(k.startswith("malformed") for k in drops)
        assert s["sbnet_offload_share"][0].value == 0.0
        assert s["sbnet_conntrack_connections"][0].value == len(sw.conntrack)
        assert all(x.labels["host"] == "compute-1" for v in s.values() for x in v)
        # Counters never go down while records are still open (not yet exported).
        for t, f, p in pk[half:]:
            sw.process(Batch.from_packets([f], p), now=t)
        s2 = _samples(render(meter))
        assert sum(x.value for x in s2["sbnet_port_rx_packets_total"]) == len(pk)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other")
        assert err.value.code == 404
    finally:
        server.close()
