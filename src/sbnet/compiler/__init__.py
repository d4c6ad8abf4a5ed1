"""The compiler: Neutron intent (the store's snapshot) plus a host name in, that host's pipeline out."""
