"""The Neutron domain: resource declarations, validation, IPAM and defaults (pure, no I/O)."""
