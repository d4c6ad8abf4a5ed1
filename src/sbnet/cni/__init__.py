"""Containers on Neutron networks: the `sbnet-cni` plugin (CNI 1.0), direct or through a SmartNIC's agent."""
