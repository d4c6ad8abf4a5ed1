"""sbnet-cni as the CNI 1.0 specification defines its calls: VERSION, and an error result (code, msg) for every bad call."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest

from sbnet.cni.plugin import HANDLERS
from sbnet.cni.ports import interface_plan
from sbnet.cni.spec import run

CONF = {"cniVersion": "1.0.0", "name": "pods", "type": "sbnet-cni",
        "api": "http://127.0.0.1:9", "network": "pods", "wait_active": 0}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/run/netns/none",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


def call(env: dict, stdin) -> tuple[int, dict | None]:
    out = io.StringIO()
    rc = run(HANDLERS, env, stdin if isinstance(stdin, str) else json.dumps(stdin), out)
    return rc, json.loads(out.getvalue()) if out.getvalue() else None


def test_version_lists_what_the_plugin_speaks():
    rc, out = call({"CNI_COMMAND": "VERSION"}, {"cniVersion": "1.0.0"})
    assert rc == 0 and out == {"cniVersion": "1.0.0", "supportedVersions": ["1.0.0"]}


@pytest.mark.parametrize("env, stdin, code, words", [
    ({"CNI_COMMAND": "FROB"}, CONF, 4, "CNI_COMMAND"),
    (ENV, "{not json", 6, "not JSON"),
    (ENV, "[1, 2]", 6, "JSON object"),
    (ENV, dict(CONF, cniVersion="0.2.0"), 1, "0.2.0"),
    (ENV, {k: v for k, v in CONF.items() if k != "cniVersion"}, 7, "cniVersion"),
    (ENV, dict(CONF, name="bad name"), 7, "name"),
    (ENV, dict(CONF, colour="blue"), 2, "colour"),
    (ENV, {k: v for k, v in CONF.items() if k != "api"}, 7, "api"),
    (dict(ENV, CNI_IFNAME="eth0/../x"), CONF, 4, "CNI_IFNAME"),
    (dict(ENV, CNI_IFNAME="a-very-long-interface-name"), CONF, 4, "CNI_IFNAME"),
    (dict(ENV, CNI_CONTAINERID=""), CONF, 4, "CNI_CONTAINERID"),
    (dict(ENV, CNI_NETNS=""), CONF, 4, "CNI_NETNS"),
    (dict(ENV, CNI_ARGS="K8S_POD_NAME"), CONF, 4, "CNI_ARGS"),
    (ENV, dict(CONF, api="ftp://x"), 7, "http"),
    (ENV, CONF, 3, "does not exist"),                          # no such namespace
    (dict(ENV, CNI_COMMAND="DEL"), CONF, 11, "cannot be reached"),    # API down: retry
    (dict(ENV, CNI_COMMAND="CHECK"), dict(CONF, nic="http://127.0.0.1:9"), 2, "api"),
])
def test_bad_calls_get_an_error_result(env, stdin, code, words):
    rc, out = call(env, stdin)
    assert rc == 1 and out["code"] == code and out["cniVersion"] == "1.0.0", out
    assert words in out["msg"] + out.get("details", ""), out


def test_the_executable_answers_quickly_and_loads_no_datapath():
    """The plugin process starts per call: no numba, fastapi or sbnet datapath in it."""
    probe = ("import sys, runpy; sys.argv=['sbnet-cni']; sys.stdin=open(0); "
             "import sbnet.cni.plugin as p, io, json, os;"
             "out=io.StringIO(); rc=p.run(p.HANDLERS, os.environ, sys.stdin.read(), out);"
             "heavy=[m for m in sys.modules if m.split('.')[0] in "
             "('numba','numpy','fastapi','httpx','sqlalchemy') or m.startswith('sbnet.datapath')];"
             "print(json.dumps({'rc': rc, 'out': out.getvalue(), 'heavy': heavy}))")
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", probe], input='{"cniVersion": "1.0.0"}',
                         env=dict(os.environ, CNI_COMMAND="VERSION"), capture_output=True,
                         text=True, timeout=60)
    took = time.monotonic() - t0
    got = json.loads(res.stdout)
    assert got["rc"] == 0 and json.loads(got["out"])["supportedVersions"] == ["1.0.0"]
    assert got["heavy"] == []
    assert took < 5, took            # a loaded 2-core box; about 0.1 s when quiet


def test_entry_point_is_declared():
    text = open(os.path.join(os.path.dirname(__file__), "../../pyproject.toml")).read()
    assert 'sbnet-cni = "sbnet.cni.plugin:main"' in text


def test_interface_plan_from_a_port():
    port = {"id": "p", "mac_address": "fa:16:3e:00:00:01",
            "fixed_ips": [{"subnet_id": "s4", "ip_address": "10.0.0.5"},
                          {"subnet_id": "s6", "ip_address": "fd00::5"}]}
    subnets = {"s4": {"cidr": "10.0.0.0/24", "gateway_ip": "10.0.0.1",
                      "dns_nameservers": ["10.0.0.53"],
                      "host_routes": [{"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"}]},
               "s6": {"cidr": "fd00::/64", "gateway_ip": "fd00::1"}}
    plan = interface_plan(port, {"mtu": 1450}, subnets)
    assert plan == {"mac": "fa:16:3e:00:00:01", "mtu": 1450,
                    "ips": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1"},
                            {"address": "fd00::5/64", "gateway": "fd00::1"}],
                    "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"},
                               {"dst": "192.168.0.0/16", "gw": "10.0.0.254"},
                               {"dst": "::/0", "gw": "fd00::1"}],
                    "dns": {"nameservers": ["10.0.0.53"]}}
