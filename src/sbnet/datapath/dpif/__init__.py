"""The dpif side of the reference switch: datapath flows, the tiers a packet meets, the upcall."""

from sbnet.datapath.dpif.interface import Dpif, DpifStats, FlowCounts, OffloadTier, Upcall

__all__ = ["Dpif", "DpifStats", "FlowCounts", "OffloadTier", "Upcall"]
