"""The reference switch: a bridge (sbnet.datapath.ofproto) over the userspace dpif (sbnet.datapath.dpif)."""

from sbnet.datapath.dpif.userspace import MAX_RECIRC
from sbnet.datapath.ofproto.bridge import Bridge, FlowStats, TraceResult, UnsupportedFlow
from sbnet.datapath.ofproto.revalidator import MAX_IDLE

Switch = Bridge

__all__ = ["MAX_IDLE", "MAX_RECIRC", "Bridge", "FlowStats", "Switch", "TraceResult",
           "UnsupportedFlow"]
