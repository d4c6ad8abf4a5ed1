"""The southbound copy's clients: what a real neutron-server (or `sbnet neutron-sync`) uses to write sbnet's store.

Standard library only, so the same code runs in neutron-server's own virtualenv."""
