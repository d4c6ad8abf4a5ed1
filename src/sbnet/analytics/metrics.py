"""Prometheus metrics: text exposition rendered from the switch and flow meter, served over HTTP."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(v) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Doc:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str, samples) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(meter, exporter=None) -> str:
    """The exposition text for one switch and its meter (call it from the switch's own thread)."""
    sw = meter.sw
    host = meter.host or sw.name
    totals = meter.totals()
    by_port_tier: dict[tuple[int, str], list[int]] = {}
    for (port, tier, _reason), (pk, by) in totals.items():
        acc = by_port_tier.setdefault((port, tier), [0, 0])
        acc[0] += pk
        acc[1] += by
    d = _Doc()
    d.family("sbnet_port_rx_packets_total", "counter",
             "Packets entering the switch, by ingress port and the tier that carried them",
             [({"host": host, "port": p, "tier": t}, v[0]) for (p, t), v in sorted(by_port_tier.items())])
    d.family("sbnet_port_rx_bytes_total", "counter",
             "Bytes entering the switch, by ingress port and tier",
             [({"host": host, "port": p, "tier": t}, v[1]) for (p, t), v in sorted(by_port_tier.items())])
    d.family("sbnet_port_tx_packets_total", "counter", "Packets sent out of each port",
             [({"host": host, "port": p, "name": port.name}, port.tx_packets)
              for p, port in sorted(sw.ports.items())])
    d.family("sbnet_port_tx_bytes_total", "counter", "Bytes sent out of each port",
             [({"host": host, "port": p, "name": port.name}, port.tx_bytes)
              for p, port in sorted(sw.ports.items())])
    tiers: dict[str, list[int]] = {}
    for (_p, t), v in by_port_tier.items():
        acc = tiers.setdefault(t, [0, 0])
        acc[0] += v[0]
        acc[1] += v[1]
    # A megaflow's packets split between tiers as the NIC takes it; the switch's own
    # per-tier counters (when it has a NIC tier) are exact, records carry the tier at export.
    exact_tiers = getattr(sw, "tier_packets", None)
    if isinstance(exact_tiers, dict) and sum(exact_tiers.values()):
        d.family("sbnet_tier_packets_total", "counter", "Packets by datapath tier",
                 [({"host": host, "tier": t}, n) for t, n in sorted(exact_tiers.items())])
        all_pk, nic = sum(exact_tiers.values()), exact_tiers.get("nic", 0)
    else:
        d.family("sbnet_tier_packets_total", "counter", "Packets by datapath tier",
                 [({"host": host, "tier": t}, v[0]) for t, v in sorted(tiers.items())])
        all_pk, nic = sum(v[0] for v in tiers.values()), tiers.get("nic", [0, 0])[0]
    d.family("sbnet_tier_bytes_total", "counter", "Bytes by datapath tier (tier at export)",
             [({"host": host, "tier": t}, v[1]) for t, v in sorted(tiers.items())])
    d.family("sbnet_offload_share", "gauge", "Share of packets carried by the NIC tier (0..1)",
             [({"host": host}, f"{nic / all_pk:.6f}" if all_pk else "0")])
    drops: dict[str, int] = {}
    for (_p, _t, reason), (pk, _by) in totals.items():
        if reason != "forwarded":
            drops[reason] = drops.get(reason, 0) + pk
    # From the records (each packet's final verdict), not sw.drop_counts(), which also
    # counts conntrack's first pass (ct + recirc, no output) as "no actions (drop)".
    d.family("sbnet_drops_total", "counter", "Dropped packets by reason (final verdict)",
             [({"host": host, "reason": r}, n) for r, n in sorted(drops.items())])
    mf_tiers: dict[str, int] = {}
    for mf in sw.cache.flows.values():
        mf_tiers[mf.tier] = mf_tiers.get(mf.tier, 0) + 1
    d.family("sbnet_megaflows", "gauge", "Megaflows cached, by tier",
             [({"host": host, "tier": t}, n) for t, n in sorted(mf_tiers.items())])
    d.family("sbnet_flow_setups_total", "counter", "Slow-path translations (upcalls)",
             [({"host": host}, sw.upcalls)])
    ct = getattr(sw, "conntrack", None)
    if ct is not None:
        d.family("sbnet_conntrack_connections", "gauge", "Connections tracked",
                 [({"host": host}, len(ct))])
        d.family("sbnet_conntrack_limit", "gauge", "Connection tracking capacity",
                 [({"host": host}, ct.limit)])
    d.family("sbnet_flow_records_open", "gauge", "Flow records not yet exported",
             [({"host": host}, meter.open_records())])
    d.family("sbnet_flow_records_exported_total", "counter", "Flow records exported, by end reason",
             [({"host": host, "end_reason": r}, n) for r, n in sorted(meter.by_end_reason.items())])
    d.family("sbnet_flow_records_evicted_total", "counter",
             "Records exported early because the record cap was reached",
             [({"host": host}, meter.evicted_for_cap)])
    d.family("sbnet_flow_records_lost_packets_total", "counter",
             "Packets of megaflows evicted before a poll saw them, without the eviction hook",
             [({"host": host}, meter.lost_packets)])
    if exporter is not None:
        enc = exporter.encoder
        d.family("sbnet_ipfix_messages_total", "counter", "IPFIX messages sent",
                 [({"host": host}, enc.messages)])
        d.family("sbnet_ipfix_records_total", "counter", "IPFIX data records sent",
                 [({"host": host}, enc.records)])
    return d.text()


class MetricsServer:
    """Serves the last rendered text on /metrics; the switch's thread calls `update` after polls."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9464) -> None:
        self._text = b""
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                with outer._lock:
                    body = outer._text
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def update(self, text: str) -> None:
        with self._lock:
            self._text = text.encode()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
