"""A switch's record of arriving VMs: what their first frame releases and sends, and the announcements sent again while their source's relay is dropped."""

from __future__ import annotations

from sbnet.datapath.arrival import AGAIN, Arrivals
from sbnet.datapath.holdfilter import Relay

MAC = "fa:16:3e:00:00:07"
RELAY = {"source": "10.0.0.2", "mac": MAC, "router_mac": "fa:16:3e:00:00:aa",
         "inside": ["10.30.0.0/24"]}
GARP = [(900, b"garp")]


def test_the_first_frame_releases_sends_and_drops_the_relay_until_released():
    a = Arrivals()
    a.hold(7, MAC)
    a.expect(7, GARP, RELAY)
    assert a.program([4789], []) is not None and a.state()["relays"] == {}
    assert a.arrived(7) == GARP
    st = a.state()
    assert st["held"] == {} and st["relays"] == {7: "10.0.0.2"}
    assert [w for _, _, w in st["events"]] == ["held", "first frame"]
    assert [(o, n) for o, _, n in st["announced"]] == [(7, 1)]
    # Sent again every AGAIN s while the relay is dropped, and the loop wakes for it.
    t = a.next_again
    assert a.due(t - AGAIN / 2) == [] and abs(a.wait(t - AGAIN / 2, 0.1) - AGAIN / 2) < 1e-6
    assert a.due(t) == GARP and a.due(t) == []
    assert a.due(t + AGAIN) == GARP
    assert a.release(7, "released") is True
    assert a.state()["relays"] == {} and a.program([4789], []) is None
    assert a.due(t + 10 * AGAIN) == [] and a.wait(t, 0.1) == 0.1


def test_a_hold_ended_otherwise_sends_nothing_and_drops_nothing():
    a = Arrivals()
    a.hold(7, MAC)
    a.expect(7, GARP, RELAY)
    assert a.release(7, "detached") is True
    assert a.arrived(7) == [] and a.state()["relays"] == {} and a.program([4789], []) is None
    a.expect(8, GARP, RELAY)                    # not held: nothing to expect
    a.hold(8, MAC)
    assert a.arrived(8) == [] and a.state()["relays"] == {}
