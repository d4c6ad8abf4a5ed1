"""Port binding against a host's NIC profile: which features a port needs and whether its vnic_type binds."""

from __future__ import annotations

from sbnet.offload.profile import Profile, builtin_profiles

DIRECT_VNICS = ("direct", "macvtap", "direct-physical")
QOS_FEATURES = {"bandwidth_limit": "qos_bandwidth", "dscp_marking": "qos_dscp",
                "minimum_bandwidth": "qos_minimum_bandwidth"}


def parse_host_profiles(items) -> dict[str, str]:
    """HOST=PROFILE command-line items -> {host: profile}; ValueError names a bad item."""
    out = {}
    for item in items or ():
        h, sep, prof = item.partition("=")
        if not sep or not h or not prof:
            raise ValueError(f"--host-profile {item!r}: expected HOST=PROFILE")
        out[h] = prof
    return out


def resolve_profiles(host_profiles: dict | None) -> dict[str, Profile]:
    """host -> Profile from host -> Profile or built-in profile name (KeyError names the bad one)."""
    named = builtin_profiles()
    out = {}
    for host, prof in (host_profiles or {}).items():
        if isinstance(prof, str):
            if prof not in named:
                raise KeyError(f"host {host}: unknown NIC profile {prof!r} "
                               f"(known: {', '.join(sorted(named))})")
            prof = named[prof]
        out[host] = prof
    return out


def host_profile(tx, profiles: dict | None, host: str | None) -> Profile | None:
    """A host's NIC profile: the one given to the API, else the one its agent registered."""
    if not host:
        return None
    if profiles and host in profiles:
        return profiles[host]
    registered = tx.get("host", host) if tx is not None else None
    name = (registered or {}).get("profile")
    return builtin_profiles().get(name) if name else None


def port_features(port: dict, network: dict | None, policies: dict[str, dict],
                  trunks: list[dict], port_pairs: list[dict]) -> list[str]:
    """The profile features (profile.FEATURES) a port uses, read from the model."""
    out = []
    kind = (network or {}).get("provider:network_type")
    if kind:
        out.append(kind)
    if port.get("port_security_enabled"):
        out.append("port_security")
        if port.get("security_groups"):
            out.append("security_groups")
    pid = port.get("qos_policy_id") or (network or {}).get("qos_policy_id")
    for rule in (policies.get(pid) or {}).get("rules", ()) if pid else ():
        feat = QOS_FEATURES.get(rule.get("type"))
        if feat and feat not in out:
            out.append(feat)
    if any(t["port_id"] == port["id"] or any(s["port_id"] == port["id"] for s in t["sub_ports"])
           for t in trunks):
        out.append("trunk")
    if any(port["id"] in (pp.get("ingress"), pp.get("egress")) for pp in port_pairs):
        out.append("port_chain")
    return out


def bind_direct(profile: Profile, features: list[str]) -> tuple[str, dict]:
    """(binding:vif_type, binding:vif_details) of a vnic_type direct port on a host with this
    NIC: "binding_failed" with the reason when the NIC cannot carry it, else the profile's
    vif type, with which features run on the NIC and which on host cores (and why)."""
    caps = profile.binding
    if caps is None:
        return "binding_failed", {"reason": f"{profile.name}: the profile says nothing about "
                                            "binding vnic_type direct ports"}
    if caps.direct is None:
        return "binding_failed", {"reason": f"{profile.name}: {caps.refused}"}
    refused = [f"{profile.name}: {why}" for f in features
               for tier, why in [caps.features.get(f, ("refused", f"{f} is not supported"))]
               if tier == "refused"]
    if refused:
        return "binding_failed", {"reason": "; ".join(dict.fromkeys(refused))}
    details = dict(caps.vif_details)
    details["offloaded"] = [f for f in features if caps.features[f][0] == "nic"]
    details["software"] = {f: caps.features[f][1] for f in features
                           if caps.features[f][0] == "software"}
    return caps.direct, details


def bind_from_store(tx, profile: Profile, port: dict) -> tuple[str, dict]:
    """bind_direct for a port being written, with its features read in the same transaction."""
    network = tx.get("network", port["network_id"])
    pid = port.get("qos_policy_id") or (network or {}).get("qos_policy_id")
    policies = {pid: tx.get("policy", pid)} if pid else {}
    features = port_features(port, network, policies, tx.list("trunk"), tx.list("port_pair"))
    return bind_direct(profile, features)
