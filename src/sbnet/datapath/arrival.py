"""A switch's record of the VMs a live migration brings to it: their VIFs held until the VM's first frame here, what is sent for them then, and what their source still relays that is dropped."""

from __future__ import annotations

import time

from sbnet.datapath import holdfilter

# While the source's relay is dropped the destination sends the VM's announcements again
# this often: a frame the source still sends from the floating IP's MAC (one the VM sent
# just before the switch-over, switched when its VIF goes there) turns the outside's
# switches back to it, and what the outside then sends, relayed, is dropped here.
AGAIN = 0.02


class Arrivals:
    """Plain state, no I/O: the switch asks what to send and which filter to put on its
    underlay ports, and does it."""

    def __init__(self) -> None:
        self.held: dict[int, str] = {}  # VIF ofport -> MAC of the VM that has not arrived yet
        self.events: list[tuple[int, float, str]] = []      # (ofport, monotonic, what)
        self.on_arrival: dict[int, list[tuple[int, bytes]]] = {}  # held VIF -> what to send
        self.relay_drop: dict[int, holdfilter.Relay] = {}   # held VIF -> its source's relay
        self.relays: dict[int, holdfilter.Relay] = {}       # arrived VIF -> relay dropped
        self.again: dict[int, list[tuple[int, bytes]]] = {}  # arrived VIF -> sent again
        self.next_again = 0.0
        self.announced: list[tuple[int, float, int]] = []   # (VIF, monotonic, frames)

    def hold(self, ofport: int, mac: str) -> None:
        self.held[ofport] = mac
        self._event(ofport, "held")

    def expect(self, ofport: int, frames: list[tuple[int, bytes]], relay: dict | None) -> None:
        """What held VIF `ofport`'s first frame brings: `frames` to send, `relay` (Relay's
        fields) to drop from then on."""
        if ofport in self.held:
            self.on_arrival[ofport] = [(int(o), bytes(f)) for o, f in frames]
            if relay:
                self.relay_drop[ofport] = holdfilter.Relay(
                    relay["source"], relay["mac"], relay["router_mac"],
                    tuple(relay["inside"]))

    def arrived(self, ofport: int) -> list[tuple[int, bytes]]:
        """The VM at held VIF `ofport` sent its first frame: released; the frames to send."""
        frames = self.on_arrival.pop(ofport, [])
        relay = self.relay_drop.pop(ofport, None)
        now = time.monotonic()
        if frames:
            self.announced.append((ofport, now, len(frames)))
            del self.announced[:-16]
        if relay is not None:
            self.relays[ofport] = relay
            if frames:
                self.again[ofport] = frames
                self.next_again = now + AGAIN
        self.release(ofport, "first frame")
        return frames

    def release(self, ofport: int, why: str) -> bool:
        """Whether the underlay's filter changed (the relay's drop ends too, except on the
        first frame, where it begins)."""
        self.on_arrival.pop(ofport, None)
        self.relay_drop.pop(ofport, None)
        changed = False
        if why != "first frame":
            self.again.pop(ofport, None)
            changed = self.relays.pop(ofport, None) is not None
        if self.held.pop(ofport, None) is not None:
            self._event(ofport, why)
            changed = True
        return changed

    def due(self, now: float) -> list[tuple[int, bytes]]:
        """The announcements to send again now (while a relay is dropped)."""
        if not self.again or now < self.next_again:
            return []
        self.next_again = now + AGAIN
        return [f for frames in self.again.values() for f in frames]

    def wait(self, now: float, most: float) -> float:
        """How long the switch's loop may sleep before due() has something."""
        return max(0.0, min(most, self.next_again - now)) if self.again else most

    def program(self, vxlan_ports: list[int], geneve_ports: list[int]) -> list | None:
        """The underlay ports' filter (None: none)."""
        # Beyond MAX_MACS arriving VMs at once, the rest are switched as before (unheld).
        macs = sorted(set(self.held.values()))[:holdfilter.MAX_MACS]
        relays = sorted(set(self.relays.values()), key=repr)
        try:
            return holdfilter.program(macs, vxlan_ports, geneve_ports, relays) \
                if macs or relays else None
        except ValueError:              # too long with the relays: those are relayed as before
            return holdfilter.program(macs, vxlan_ports, geneve_ports) if macs else None

    def state(self) -> dict:
        return {"held": dict(self.held), "events": list(self.events),
                "announced": list(self.announced),
                "relays": {o: r.source for o, r in self.relays.items()}}

    def _event(self, ofport: int, what: str) -> None:
        self.events.append((ofport, time.monotonic(), what))
        del self.events[:-16]
