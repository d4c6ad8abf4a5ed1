"""Offload report: megaflows and packets on the NIC and in software, per port, security-group rule and network."""

from __future__ import annotations

from collections import defaultdict

# The resources a report is about, in the order shown; other origins (routers, floating
# IPs, QoS policies, chains) follow.
KINDS = ("port", "security_group_rule", "network")


def megaflow_rows(switch, pipeline) -> list[dict]:
    """One row per live megaflow of a switch: tier, NIC and software packets, the placement
    reason when in software, and the origins ("stage kind id") of the rules it ran."""
    switch.fold_nic()
    origins = pipeline.origins if pipeline is not None else {}
    tier = switch.tier
    nic_counts = getattr(switch, "mf_nic_packets", {})
    out = []
    for mf in list(switch.cache.flows.values()):      # a follower thread may be applying
        total = int(switch.cache.packets[mf.mf_id])
        nic = min(total, nic_counts.get(mf.mf_id, 0))
        placed = tier.placement(mf.mf_id) if tier is not None else None
        reason = "" if mf.tier == "nic" else (
            placed.reason if placed is not None else "no NIC tier on this host")
        if placed is not None and placed.tier == "nic" and mf.tier != "nic":
            reason = "waiting for the NIC inserter, or evicted by busier megaflows"
        if mf.tier == "nic" and placed is not None and placed.needs_ct and total > nic:
            reason = "connections not in the NIC conntrack table (new, closing, or refused)"
        names = [origins[r.flow.cookie] for r in mf.rules if r.flow.cookie in origins]
        out.append({"tier": mf.tier, "packets": total, "nic_packets": nic,
                    "software_packets": total - nic, "reason": reason,
                    "origins": list(dict.fromkeys(names))})
    return out


def report(hosts: dict) -> dict:
    """hosts: name -> (switch, installed HostPipeline).  Returns {"hosts": [...], "resources":
    [...]}: per host the NIC/software packet totals, and per resource that made flows (kind,
    id, stage) the megaflows and packets on each tier, with the reasons (and how many
    packets each reason kept in software)."""
    agg: dict[tuple, dict] = {}
    host_rows = []
    for name, (switch, pipeline) in sorted(hosts.items()):
        tier = switch.tier
        host_rows.append({"host": name, "profile": tier.profile.name if tier else "none",
                          "nic_packets": switch.tier_packets.get("nic", 0),
                          "software_packets": switch.tier_packets.get("software", 0),
                          "nic_connections": tier.ct_count() if tier else 0,
                          "conntrack_refused": tier.ct_refused if tier else 0})
        for row in megaflow_rows(switch, pipeline):
            for origin in row["origins"]:
                stage, kind, ident = (origin.split(" ", 2) + ["", ""])[:3]
                key = (kind, ident)
                a = agg.setdefault(key, {"kind": kind, "id": ident, "stages": set(),
                                         "hosts": set(), "megaflows_nic": 0,
                                         "megaflows_software": 0, "packets_nic": 0,
                                         "packets_software": 0,
                                         "reasons": defaultdict(int)})
                a["stages"].add(stage)
                a["hosts"].add(name)
                a["megaflows_nic" if row["tier"] == "nic" else "megaflows_software"] += 1
                a["packets_nic"] += row["nic_packets"]
                a["packets_software"] += row["software_packets"]
                if row["reason"] and (row["software_packets"] or row["tier"] != "nic"):
                    a["reasons"][row["reason"]] += row["software_packets"]
    order = {k: i for i, k in enumerate(KINDS)}
    resources = []
    for (kind, ident), a in sorted(agg.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0])):
        a["stages"] = sorted(a["stages"])
        a["hosts"] = sorted(a["hosts"])
        a["reasons"] = dict(sorted(a["reasons"].items(), key=lambda kv: -kv[1]))
        resources.append(a)
    return {"hosts": host_rows, "resources": resources}


def cluster_report(cluster) -> dict:
    """report() of an embedded Cluster's hosts (what GET /v2.0/sbnet/offload serves)."""
    return report({n: (h.switch, h.installed) for n, h in cluster.hosts.items()})


def cluster_provider(cluster):
    """The callable create_app(offload_report=...) takes, for a process with embedded hosts."""
    return lambda: cluster_report(cluster)
