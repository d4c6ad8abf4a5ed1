"""Profiles are data: the shipped ones load, user ones add or replace, malformed ones are refused with file, key and reason."""

from __future__ import annotations

import pytest
import yaml

from sbnet.offload import (
    BUILTIN_DIR,
    ProfileError,
    builtin_profiles,
    load_profile,
    load_profiles,
    parse_profile,
)

GOOD = """
name: tiny
tier: nic
nic: Tiny NIC
description: a test NIC
sources: [https://example.org/tiny-nic-datasheet]
match:
  recirc_id: any
  in_port: exact
  eth_dst: any
  ct_state: {subset: "+trk+est"}
actions:
  output: {}
  ct: {protocols: [tcp, 17]}
  set: {headers: {eth: [eth_dst]}}
refused_actions:
  userspace: no CPU path
conntrack: {capacity: 10, states: ["0", "+trk+est"]}
capacity: {flows: 4, insertion_rate: 100}
performance: {mpps: 10, latency_us: 1.5}
"""


def bad(text: str, key: str, reason: str, file: str = "bad.yaml") -> ProfileError:
    with pytest.raises(ProfileError) as e:
        parse_profile(text, file)
    assert e.value.file == file and e.value.key == key, str(e.value)
    assert reason in e.value.reason, str(e.value)
    assert str(e.value).startswith(f"{file}: {key}: ")
    return e.value


def test_good_profile_loads():
    p = parse_profile(GOOD, "tiny.yaml")
    assert p.name == "tiny" and p.flows == 4 and p.insertion_rate == 100 and p.ct_capacity == 10
    assert p.ct_states == (0, 0x22) and p.actions["ct"].protocols == {6, 17}
    assert p.match["ct_state"].subset == 0x22


def test_user_directory_adds_and_replaces(tmp_path):
    (tmp_path / "tiny.yaml").write_text(GOOD)
    (tmp_path / "smartnic.yaml").write_text(GOOD.replace("name: tiny", "name: smartnic"))
    got = load_profiles(BUILTIN_DIR, tmp_path)
    assert set(got) >= {"tiny", "sriov", "software", "smartnic"}
    assert got["smartnic"].nic == "Tiny NIC"              # later paths win
    assert builtin_profiles()["smartnic"].nic == "TC flower"
    assert load_profile(tmp_path / "tiny.yaml").file.endswith("tiny.yaml")


def test_error_names_the_file(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text(GOOD.replace("eth_dst: any", "eth_dsst: any"))
    with pytest.raises(ProfileError, match=r"broken\.yaml: match\.eth_dsst: unknown field"):
        load_profiles(tmp_path)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.yaml")


@pytest.mark.parametrize("drop", ["name", "description", "sources", "tier", "nic", "match",
                                  "actions", "capacity"])
def test_missing_keys(drop):
    doc = yaml.safe_load(GOOD)
    del doc[drop]
    bad(yaml.safe_dump(doc), drop, "non-empty list" if drop == "sources" else "missing required key")


def test_missing_nested_numbers():
    bad(GOOD.replace("insertion_rate: 100", "rate: 100"), "capacity.insertion_rate", "missing required key")
    bad(GOOD.replace("latency_us: 1.5", "lat: 1"), "performance.latency_us", "missing required key")
    bad(GOOD.replace("conntrack: {capacity: 10, ", "conntrack: {"), "conntrack.capacity", "missing")
    bad(GOOD.replace("conntrack: {capacity: 10, states: [\"0\", \"+trk+est\"]}\n", ""), "conntrack",
        "required when actions lists ct")


@pytest.mark.parametrize("old,new,key,reason", [
    ("flows: 4", "flows: -5", "capacity.flows", "must be > 0"),
    ("flows: 4", "flows: 4.5", "capacity.flows", "must be an integer"),
    ("flows: 4", "flows: lots", "capacity.flows", "must be an integer"),
    ("flows: 4", "flows: true", "capacity.flows", "must be an integer"),
    ("insertion_rate: 100", "insertion_rate: 0", "capacity.insertion_rate", "must be > 0"),
    ("mpps: 10", "mpps: fast", "performance.mpps", "must be a number"),
    ("latency_us: 1.5", "latency_us: -1", "performance.latency_us", "must be >= 0"),
    ("capacity: 10,", "capacity: -1,", "conntrack.capacity", "must be >= 0"),
])
def test_bad_numbers(old, new, key, reason):
    bad(GOOD.replace(old, new), key, reason)


@pytest.mark.parametrize("old,new,key,reason", [
    ("eth_dst: any", "eth_dsst: any", "match.eth_dsst", "unknown field"),
    ("eth_dst: any", "eth_dst: sometimes", "match.eth_dst", "unknown mask policy 'sometimes'"),
    ("eth_dst: any", "eth_dst: [0x1000000000000]", "match.eth_dst", "not a nonzero 48-bit integer"),
    ("eth_dst: any", "eth_dst: {prefix: 3}", "match.eth_dst", "bad mask policy"),
    ('subset: "+trk+est"', 'subset: "+trk+bogus"', "match.ct_state", "bad subset"),
    ("output: {}", "frobnicate: {}", "actions.frobnicate", "unknown action name"),
    ("userspace: no CPU path", "teleport: no", "refused_actions.teleport", "unknown action name"),
    ("userspace: no CPU path", "output: no", "refused_actions.output", "also listed under actions"),
    ("output: {}", "output: {speed: 3}", "actions.output.speed", "unknown option"),
    ("[eth_dst]", "[eth_dest]", "actions.set.headers.eth", "unknown field 'eth_dest'"),
    ("{eth: [eth_dst]}", "{ether: [eth_dst]}", "actions.set.headers.ether", "unknown header"),
    ("[tcp, 17]", "[tcp, 300]", "actions.ct.protocols", "bad IP protocol 300"),
    ('"+trk+est"]', '"+trk+established"]', "conntrack.states[1]", "bad ct_state"),
    ("tier: nic", "tier: fpga", "tier", "must be 'nic' or 'software'"),
    ("name: tiny", "name: tiny\ncolour: blue", "colour", "unknown key"),
    ("sources: [https://example.org/tiny-nic-datasheet]", "sources: []", "sources", "non-empty list"),
])
def test_bad_names(old, new, key, reason):
    assert old in GOOD
    bad(GOOD.replace(old, new), key, reason)


def test_refused_match_and_refuse_when_are_checked():
    bad(GOOD + 'refused_match: {"zzz*": nope}\n', "refused_match.zzz*", "names no field")
    bad(GOOD + "refuse_when:\n  - match: {eth_tipe: 0x800}\n    reason: r\n",
        "refuse_when[0].match.eth_tipe", "unknown field")
    bad(GOOD + "refuse_when:\n  - match: {ip_frag: maybe}\n    reason: r\n",
        "refuse_when[0].match.ip_frag", "bad value")
    bad(GOOD + "refuse_when:\n  - match: {ip_frag: 'yes'}\n", "refuse_when[0].reason", "missing")


def test_not_yaml_and_not_a_mapping():
    bad("name: [unclosed", "-", "not valid YAML")
    bad("- just\n- a list\n", "-", "must be a mapping")


def test_software_profile_has_no_nic_keys():
    bad("name: s\ntier: software\ndescription: d\nsources: [x]\ncapacity: {flows: 1}\n",
        "capacity", "no NIC tier")


def test_the_profile_vocabulary_covers_every_action_and_set_header_of_our_datapath():
    # Profiles are plain data with no datapath import: their action and set() header
    # vocabulary is OVS's, written out.  A datapath action or header missing from it could
    # never be named by a profile, so never offloaded.
    import dataclasses

    from sbnet.datapath import odp
    from sbnet.offload.profile import OVS_ACTIONS, SET_HEADER_NAMES, action_name
    ours = {action_name(c) for c in vars(odp).values()
            if isinstance(c, type) and c.__module__ == odp.__name__
            and dataclasses.is_dataclass(c)}
    assert {"output", "set", "ct", "recirc", "tnl_push", "push_vlan"} <= ours
    assert ours <= OVS_ACTIONS, sorted(ours - OVS_ACTIONS)
    headers = set(odp.SET_HEADERS)
    assert headers <= SET_HEADER_NAMES, sorted(headers - SET_HEADER_NAMES)
