"""The OVS agent's view of its bridge's VIFs, followed through an OVSDB IDL (the server pushes changes; nothing polls ovs-vsctl)."""

from __future__ import annotations

import json
import subprocess
import threading

COLUMNS = {"Bridge": ["name", "ports"], "Port": ["name", "interfaces"],
           "Interface": ["name", "ofport", "external_ids"]}


class IfaceWatcher:
    """Neutron port id -> ofport of the bridge's interfaces that carry external_ids:iface-id
    (as Nova/os-vif plug them), kept by an IDL monitor of the Open_vSwitch database in a
    thread that sleeps until the server sends a change."""

    def __init__(self, db_sock: str, bridge: str) -> None:
        import ovs.db.idl
        schema = json.loads(subprocess.run(
            ["ovsdb-client", "get-schema", f"unix:{db_sock}", "Open_vSwitch"],
            capture_output=True, text=True, check=True, timeout=30).stdout)
        helper = ovs.db.idl.SchemaHelper(schema_json=schema)
        for table, cols in COLUMNS.items():
            helper.register_columns(table, cols)
        self.idl = ovs.db.idl.Idl(f"unix:{db_sock}", helper)
        self.bridge = bridge
        self.changes = 0                   # how many times the view was rebuilt
        self._map: dict[str, int] = {}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sbnet-ovsdb", daemon=True)

    def start(self, timeout: float = 30.0) -> "IfaceWatcher":
        """Start following; returns once the first full view is in (a restarted agent's
        first sync must see every VIF, or it would take their flows away)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("no answer from the OVS database: is ovsdb-server running?")
        return self

    def _run(self) -> None:
        import ovs.poller
        seen = None
        while not self._stop.is_set():
            self.idl.run()
            if self.idl.change_seqno != seen and self.idl.has_ever_connected():
                seen = self.idl.change_seqno
                self._map = self._view()
                self.changes += 1
                self._ready.set()
            poller = ovs.poller.Poller()
            self.idl.wait(poller)
            poller.timer_wait(1000)        # to notice stop(); the IDL wakes it on changes
            poller.block()

    def _view(self) -> dict[str, int]:
        out = {}
        for br in self.idl.tables["Bridge"].rows.values():
            if br.name != self.bridge:
                continue
            for port in br.ports:
                for iface in port.interfaces:
                    pid = iface.external_ids.get("iface-id")
                    ofport = iface.ofport[0] if iface.ofport else -1
                    if pid and ofport > 0:
                        out[pid] = ofport
        return out

    def iface_ids(self) -> dict[str, int]:
        return dict(self._map)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)
        self.idl.close()
