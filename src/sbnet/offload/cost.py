"""The cost model: host cores per Mpps, NIC share and per-tier latency from counts, measured CPU time and a profile."""

from __future__ import annotations

from dataclasses import dataclass

from sbnet.offload.profile import Profile


@dataclass(frozen=True)
class Cost:
    """What a traffic mix costs on one host with one NIC profile."""

    profile: str
    nic_packets: int
    software_packets: int
    nic_share: float                  # fraction of packets the NIC forwarded
    software_ns_per_packet: float     # measured host CPU per software packet
    host_cores_per_mpps: float        # host cores per Mpps of offered traffic (all tiers)
    nic_latency_us: float             # from the profile
    software_latency_us: float        # profile host path + measured CPU per packet
    mean_latency_us: float            # packet-weighted over both tiers
    nic_limit_mpps: float             # offered Mpps at which the NIC tier saturates (inf: no NIC work)

    def host_cores(self, offered_mpps: float) -> float:
        """Host cores busy forwarding `offered_mpps` of this mix."""
        return self.host_cores_per_mpps * offered_mpps


def cost(profile: Profile, nic_packets: int, software_packets: int,
         software_cpu_seconds: float) -> Cost:
    """Cost of a run: packets per tier (from NicTier.record / the switch) and the host CPU
    seconds the switch measured for its software packets (parse, lookup, upcalls, actions).

    Host cores per Mpps = CPU seconds per offered packet x 10^6: the NIC's packets cost
    the host nothing.  Software latency = the profile's host-path latency plus the
    measured CPU time per software packet; NIC latency is the profile's figure.
    """
    if nic_packets < 0 or software_packets < 0 or software_cpu_seconds < 0:
        raise ValueError("packet counts and CPU time must not be negative")
    total = nic_packets + software_packets
    share = nic_packets / total if total else 0.0
    ns = software_cpu_seconds / software_packets * 1e9 if software_packets else 0.0
    cores_per_mpps = software_cpu_seconds / total * 1e6 if total else 0.0
    nic_lat = profile.latency_us if profile.offloads else 0.0
    sw_lat = profile.software_latency_us + ns / 1e3
    mean = share * nic_lat + (1 - share) * sw_lat if total else 0.0
    limit = profile.mpps / share if profile.offloads and share > 0 else float("inf")
    return Cost(profile.name, nic_packets, software_packets, share, ns, cores_per_mpps,
                nic_lat, sw_lat, mean, limit)
