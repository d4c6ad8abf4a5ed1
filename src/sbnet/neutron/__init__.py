"""sbnet inside a real neutron-server: the ML2 mechanism driver and the service-plugin drivers.

Importable only where neutron is installed (scripts/neutron-venv); nothing else in sbnet
imports it.  Neutron's database is the truth; every change is written to sbnet's store (the
southbound copy the host agents follow) through sbnet.southbound."""
