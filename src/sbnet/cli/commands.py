"""Registers every command module of the `sbnet` CLI on the app."""

import importlib

from sbnet.cli.main import app

# Modules that define commands; a module missing here is not yet built.
_MODULES = ("replay", "trace", "conntrack", "serve", "flows", "run", "offload", "compare", "agent",
            "neutron_sync", "migrate")

for _name in _MODULES:
    try:
        _mod = importlib.import_module(f"sbnet.cli.{_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"sbnet.cli.{_name}":
            raise
        continue
    _mod.register(app)
