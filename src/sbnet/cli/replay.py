"""`sbnet replay`: run a pcap (or generated traffic) through a flow file and report what happened."""

from __future__ import annotations

import random
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table as RichTable


def register(app: typer.Typer) -> None:
    app.command("replay")(replay)
    app.command("dpctl")(dpctl)


def replay(
    flows: Path = typer.Argument(..., help="Flow file in ovs-ofctl syntax (flows, group_id= lines)."),
    pcap: Path = typer.Option(None, "--pcap", help="pcap/pcapng to replay; generated traffic if absent."),
    in_port: int = typer.Option(1, "--in-port", help="Port the packets arrive on."),
    ports: int = typer.Option(4, "--ports", help="Number of switch ports (1..N)."),
    count: int = typer.Option(10000, "--count", help="Generated packets when no pcap is given."),
    batch: int = typer.Option(256, "--batch", help="Packets per batch."),
    out_dir: Path = typer.Option(None, "--out", help="Write each port's output to DIR/port-N.pcap."),
    offload: str = typer.Option(None, "--offload", help="NIC profile for a NIC tier in front of "
                                "the software cache (sriov, software, smartnic)."),
) -> None:
    """Replay packets through the reference switch; print forwarded/dropped per rule and why."""
    from sbnet.datapath.batch import Batch

    console = Console()
    sw = load_switch(flows, ports, out_dir, offload)
    # The clock follows the capture (generated traffic: one packet per millisecond), so
    # timeouts and the NIC tier's insertion rate see time pass as they would live.
    stamped = read_capture(pcap) if pcap else [(i / 1000, p) for i, p in
                                                enumerate(generated_traffic(count))]
    packets = [p for _, p in stamped]
    for i in range(0, len(packets), batch):
        sw.process(Batch.from_packets(packets[i:i + batch], in_port), now=stamped[i][0])
    report(console, sw, len(packets))
    for port in sw.ports.values():
        port.close()


def dpctl(
    command: str = typer.Argument(..., help="dump-flows: the datapath flows (megaflows); with "
                                  "--host also show (the kernel tier's counters) and del-dp "
                                  "(take a kept kernel tier away)."),
    flows: Path = typer.Argument(None, help="Flow file in ovs-ofctl syntax (replay mode)."),
    pcap: Path = typer.Option(None, "--pcap", help="pcap/pcapng to replay; generated traffic if absent."),
    in_port: int = typer.Option(1, "--in-port"),
    ports: int = typer.Option(4, "--ports"),
    count: int = typer.Option(2000, "--count", help="Generated packets when no pcap is given."),
    offload: str = typer.Option(None, "--offload", help="NIC profile (sriov, software, smartnic)."),
    host: str = typer.Option(None, "--host", help="The kernel eBPF tier of the `sbnet agent "
                             "--datapath ebpf --host HOST` running here, read from its pinned "
                             "maps."),
    netns: str = typer.Option(None, "--netns", help="With --host: the namespace of its devices."),
) -> None:
    """After a replay, list megaflows like `ovs-appctl dpctl/dump-flows -m`: match, counters,
    the tier that carries each one and, when it stays in software, why.  With --host: the
    megaflow entries a running agent's kernel tier holds, with their counters, as
    `ovs-dpctl dump-flows` shows the kernel datapath's."""
    from sbnet.datapath.batch import Batch

    if host is not None:
        _kernel_dpctl(command, host, netns)
        return
    if command != "dump-flows":
        Console().print(f"[red]unknown dpctl command {command!r} (known: dump-flows; show and "
                        f"del-dp with --host)[/red]")
        raise typer.Exit(2)
    if flows is None:
        Console().print("[red]give a FLOWS file to replay, or --host for a running kernel tier[/red]")
        raise typer.Exit(2)
    sw = load_switch(flows, ports, None, offload)
    stamped = read_capture(pcap) if pcap else [(i / 1000, p) for i, p in
                                                enumerate(generated_traffic(count))]
    packets = [p for _, p in stamped]
    for i in range(0, len(packets), 256):
        sw.process(Batch.from_packets(packets[i:i + 256], in_port), now=stamped[i][0])
    sw.clock = lambda: stamped[-1][0] if stamped else 0.0
    for line in sw.dump_megaflows():
        typer.echo(line)


def _kernel_dpctl(command: str, host: str, netns: str | None) -> None:
    from sbnet.cli.main import BadInput
    from sbnet.datapath.ebpf import pins
    from sbnet.datapath.ebpf.dump import Pinned
    try:
        pins.pin_dir(host)
    except ValueError as exc:
        raise BadInput(f"--host: {exc}") from None
    if command == "del-dp":
        gone = pins.remove(host, netns)
        typer.echo(f"{host}: program taken off {', '.join(gone) or 'no device'}; pins removed")
        return
    if command not in ("dump-flows", "show"):
        Console().print(f"[red]unknown dpctl command {command!r} (known: dump-flows, show, "
                        f"del-dp)[/red]")
        raise typer.Exit(2)
    with Pinned(host, netns) as p:
        if command == "show":
            for name, value in p.show().items():
                typer.echo(f"{name}: {value}")
        else:
            for line in p.dump_flows():
                typer.echo(line)


def load_switch(flows: Path, ports: int, out_dir: Path | None = None, offload: str | None = None):
    """A reference switch with ports 1..N (pcap files in out_dir if given) and the flow file loaded."""
    from sbnet.datapath.ports import PcapPort
    from sbnet.datapath.switch import Switch
    from sbnet.flows.ofctl import FlowSyntaxError
    from sbnet.offload import builtin_profiles, nic_tier

    if offload is not None and offload not in builtin_profiles():
        Console().print(f"[red]unknown NIC profile {offload!r} "
                        f"(known: {', '.join(sorted(builtin_profiles()))})[/red]")
        raise typer.Exit(2)
    sw = Switch(offload=None if offload is None else nic_tier(offload))
    for p in range(1, ports + 1):
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
            sw.add_port(p, port=PcapPort(p, f"p{p}", out_dir / f"port-{p}.pcap"))
        else:
            sw.add_port(p)
    try:
        sw.load(flows.read_text())
    except OSError as exc:
        Console(stderr=True).print(f"[red]{flows}: {exc.strerror or exc}[/red]")
        raise typer.Exit(2)
    except (FlowSyntaxError, ValueError, RecursionError) as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]{flows}: {exc}[/red]")
        raise typer.Exit(2)
    return sw


MAX_RECORD = 262144  # tcpdump's largest snap length: a longer record is a broken file


def read_capture(path) -> list[tuple[float, bytes]]:
    """A capture's packets, after checking the file is a whole pcap or pcapng (a missing,
    truncated or foreign file, or an absurd record length, is a BadInput naming it)."""
    import struct

    from sbnet.cli.main import BadInput
    from sbnet.datapath.ports import read_pcap
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadInput(f"{path}: {exc.strerror or exc}") from None
    magic = data[:4]
    if magic == b"\x0a\x0d\x0d\x0a":                     # pcapng: walk the blocks
        if len(data) < 12:
            raise BadInput(f"{path}: truncated pcapng file")
        order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        off = 0
        while off < len(data):
            if off + 12 > len(data):
                raise BadInput(f"{path}: truncated pcapng block at byte {off}")
            length = struct.unpack_from(order + "I", data, off + 4)[0]
            if length < 12 or length % 4 or off + length > len(data):
                raise BadInput(f"{path}: pcapng block at byte {off} has a bad length {length}")
            off += length
    else:
        orders = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
                  b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}
        if magic not in orders:
            raise BadInput(f"{path}: not a pcap or pcapng file")
        if len(data) < 24:
            raise BadInput(f"{path}: truncated pcap header")
        order, off = orders[magic], 24
        while off < len(data):
            if off + 16 > len(data):
                raise BadInput(f"{path}: truncated record header at byte {off}")
            incl = struct.unpack_from(order + "I", data, off + 8)[0]
            if incl > MAX_RECORD:
                raise BadInput(f"{path}: record at byte {off} claims {incl} bytes")
            if off + 16 + incl > len(data):
                raise BadInput(f"{path}: truncated record at byte {off}")
            off += 16 + incl
    try:
        return read_pcap(str(path))
    except Exception as exc:  # noqa: BLE001 - the reader's complaint about this file
        raise BadInput(f"{path}: {exc}") from None


def replay_files(sw, specs: list, batch: int) -> None:
    """Replay PORT:FILE (or FILE, on port 1) captures in timestamp order, in batches."""
    from sbnet.datapath.batch import Batch

    tagged = []
    for spec in specs:
        port, sep, name = str(spec).partition(":")
        if not sep or not port.isdigit():
            port, name = "1", str(spec)
        tagged += [(ts, int(port), pkt) for ts, pkt in read_capture(name)]
    tagged.sort(key=lambda t: t[0])
    # Consecutive packets from one port form a batch, so replies see their requests.
    i = 0
    while i < len(tagged):
        j = i
        while j < len(tagged) and j - i < batch and tagged[j][1] == tagged[i][1]:
            j += 1
        sw.process(Batch.from_packets([t[2] for t in tagged[i:j]], tagged[i][1]),
                   now=tagged[i][0])
        i = j


def generated_traffic(count: int, seed: int = 1) -> list[bytes]:
    """A mix of TCP, UDP, ICMP and ARP between a few hosts, built with dpkt."""
    import dpkt

    from sbnet.flows.fields import ETH_ARP, ETH_IP, IP_ICMP, IP_TCP, IP_UDP

    r = random.Random(seed)
    macs = [bytes.fromhex(f"0200000000{i:02x}") for i in range(1, 9)]
    out = []
    for _ in range(count):
        src, dst = r.sample(range(8), 2)
        kind = r.random()
        if kind < 0.1:
            arp = dpkt.arp.ARP(op=1, sha=macs[src], spa=bytes([10, 0, 0, src + 1]),
                               tha=b"\0" * 6, tpa=bytes([10, 0, 0, dst + 1]))
            eth = dpkt.ethernet.Ethernet(src=macs[src], dst=b"\xff" * 6, type=ETH_ARP, data=arp)
        else:
            if kind < 0.6:
                l4, proto = dpkt.tcp.TCP(sport=r.randint(1024, 65535), dport=r.choice([22, 80, 443]),
                                         flags=dpkt.tcp.TH_SYN), IP_TCP
            elif kind < 0.9:
                l4, proto = dpkt.udp.UDP(sport=r.randint(1024, 65535), dport=r.choice([53, 123])), IP_UDP
            else:
                l4, proto = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1)), IP_ICMP
            ip = dpkt.ip.IP(src=bytes([10, 0, 0, src + 1]), dst=bytes([10, 0, 0, dst + 1]),
                            p=proto, ttl=64, data=l4)
            ip.len = len(ip)
            eth = dpkt.ethernet.Ethernet(src=macs[src], dst=macs[dst], type=ETH_IP, data=ip)
        out.append(bytes(eth))
    return out


def report(console: Console, sw, total: int) -> None:
    t = RichTable(title="Per rule")
    for col in ("table", "priority", "match", "actions", "packets", "bytes"):
        t.add_column(col, justify="right" if col in ("table", "priority", "packets", "bytes") else "left")
    for s in sw.dump_flows(now=0.0):
        text = str(s.flow)
        match, _, actions = text.partition(" actions=")
        match = ",".join(p for p in match.split(",") if not p.startswith(("table=", "priority=")))
        t.add_row(str(s.flow.table), str(s.flow.priority), match or "*", actions,
                  str(s.n_packets), str(s.n_bytes))
    console.print(t)
    out = RichTable(title="Per port (sent)")
    out.add_column("port")
    out.add_column("packets", justify="right")
    out.add_column("bytes", justify="right")
    for p in sorted(sw.ports):
        port = sw.ports[p]
        if port.tx_packets:
            out.add_row(port.name, str(port.tx_packets), str(port.tx_bytes))
    console.print(out)
    drops = sw.drop_counts()
    d = RichTable(title="Dropped, by reason")
    d.add_column("reason")
    d.add_column("packets", justify="right")
    for reason, n in sorted(drops.items(), key=lambda kv: -kv[1]):
        d.add_row(reason, str(n))
    console.print(d)
    forwarded = sum(int(sw.cache.packets[m.mf_id])
                    for m in sw.cache.flows.values() if m.reason == "forwarded")
    console.print(f"{total} packets: {forwarded} forwarded, {sum(drops.values())} dropped; "
                  f"{sw.upcalls} flow setups, {len(sw.cache)} megaflows cached")
    if sw.tier is not None:
        nic, soft = sw.tier_packets["nic"], sw.tier_packets["software"]
        console.print(f"NIC tier ({sw.tier.profile.name}): {nic} packets on the NIC, {soft} "
                      f"in software ({100 * nic / max(nic + soft, 1):.1f}% offloaded)")
