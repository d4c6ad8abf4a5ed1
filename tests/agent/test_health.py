"""Member health checks against real servers on this machine: TCP, HTTP codes, UDP-CONNECT,
PING, and Octavia's rise/fall counting as the checker reports it."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from sbnet.agent.health import HealthChecker, MemberState, probe


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def servers():
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))            # bound, never listening: refused
    yield {"http": web.server_address[1], "udp": udp.getsockname()[1],
           "closed": closed.getsockname()[1]}
    web.shutdown()
    udp.close()
    closed.close()


def hm(kind: str, **kw) -> dict:
    return {"type": kind, "delay": 1, "timeout": 1, "max_retries": 2, "max_retries_down": 2,
            "http_method": "GET", "url_path": "/ok", "expected_codes": "200", **kw}


def test_probes_tell_live_from_dead(servers):
    assert probe(hm("TCP"), "127.0.0.1", servers["http"])
    assert not probe(hm("TCP"), "127.0.0.1", servers["closed"])
    assert probe(hm("HTTP"), "127.0.0.1", servers["http"])
    assert not probe(hm("HTTP", url_path="/sick"), "127.0.0.1", servers["http"])
    assert probe(hm("HTTP", url_path="/sick", expected_codes="500-504"), "127.0.0.1",
                 servers["http"])
    assert probe(hm("UDP-CONNECT"), "127.0.0.1", servers["udp"])
    assert not probe(hm("UDP-CONNECT"), "127.0.0.1", servers["closed"])
    assert probe(hm("PING"), "127.0.0.1", 0)


def test_rise_and_fall_count_consecutive_probes():
    st = MemberState()
    assert st.observe(True, rise=2, fall=3) == "ONLINE"      # the first probe decides
    assert st.observe(False, 2, 3) is None
    assert st.observe(False, 2, 3) is None
    assert st.observe(True, 2, 3) is None                    # a success resets the fall
    assert [st.observe(False, 2, 3) for _ in range(3)] == [None, None, "ERROR"]
    assert st.observe(True, 2, 3) is None
    assert st.observe(True, 2, 3) == "ONLINE"


def test_checker_probes_members_bound_here_and_reports_changes(servers):
    snap = {
        "port": [{"id": "p1", "network_id": "n1", "binding:host_id": "h1",
                  "fixed_ips": [{"ip_address": "127.0.0.1"}]}],
        "lb_healthmonitor": [{**hm("TCP", max_retries_down=1), "pool_id": "pool"}],
        "lb_member": [{"id": "up", "pool_id": "pool", "address": "127.0.0.1",
                       "protocol_port": servers["http"], "admin_state_up": True},
                      {"id": "down", "pool_id": "pool", "address": "127.0.0.1",
                       "protocol_port": servers["closed"], "admin_state_up": True},
                      {"id": "elsewhere", "pool_id": "pool", "address": "10.9.9.9",
                       "protocol_port": 80, "admin_state_up": True}],
    }
    reports = []
    checker = HealthChecker("h1", lambda net: None, reports.append)
    try:
        assert checker.step(snap, now=0.0) == {"up": "ONLINE", "down": "ERROR"}
        assert checker.step(snap, now=0.5) == {}                 # not due before the delay
        snap["lb_member"][1]["protocol_port"] = servers["http"]  # the member comes back
        snap["lb_member"][1]["health"] = "ERROR"
        assert checker.step(snap, now=1.0) == {}                 # rise: two successes
        assert checker.step(snap, now=2.0) == {"down": "ONLINE"}
        assert reports == [{"up": "ONLINE", "down": "ERROR"}, {"down": "ONLINE"}]
    finally:
        checker.close()
