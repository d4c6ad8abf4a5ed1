"""The offload engine: NIC capability profiles, per-megaflow placement, the NIC tier model and its cost."""

from sbnet.offload.cost import Cost, cost
from sbnet.offload.placement import Placement, place
from sbnet.offload.profile import (
                                   BUILTIN_DIR,
                                   Profile,
                                   ProfileError,
                                   action_name,
                                   builtin_profiles,
                                   load_profile,
                                   load_profiles,
                                   parse_profile,
)
from sbnet.offload.tier import Changes, Counters, NicTier, nic_tier

__all__ = ["BUILTIN_DIR", "Changes", "Cost", "Counters", "NicTier", "Placement", "Profile",
           "ProfileError", "action_name", "builtin_profiles", "cost", "load_profile",
           "load_profiles", "nic_tier", "parse_profile", "place"]
