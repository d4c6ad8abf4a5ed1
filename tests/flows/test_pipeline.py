"""Pipelines declared as data: numbers derived from the declaration, flows checked when built."""

import pytest

from sbnet.flows import actions as A
from sbnet.flows.match import Match
from sbnet.flows.pipeline import Pipeline, PipelineError, TableSpec

SPEC = (
    TableSpec("classify", "port to network", frozenset({"in_port", "vlan_vid"}),
              next_tables=("acl",), miss="drop"),
    TableSpec("acl", "stateless ACL", frozenset({"ip_src", "ip_dst", "tcp_dst"}),
              next_tables=("forward",), miss="next"),
    TableSpec("forward", "L2 forwarding", frozenset({"eth_dst"}), miss="controller"),
)


def test_numbers_follow_the_declaration():
    p = Pipeline(SPEC)
    assert [p.number(t.name) for t in SPEC] == [0, 1, 2]
    assert Pipeline(SPEC, base=10).number("forward") == 12


def test_flow_is_checked_when_built():
    p = Pipeline(SPEC)
    f = p.flow("classify", 10, Match.of(in_port=1), (A.GotoTable(p.number("acl")),))
    assert f.table == 0
    with pytest.raises(PipelineError, match="may not match eth_dst"):
        p.flow("classify", 10, Match.of(eth_dst=1))
    with pytest.raises(PipelineError, match="may not go to table forward"):
        p.flow("classify", 10, Match.of(in_port=1), (A.GotoTable(2),))
    with pytest.raises(PipelineError, match="may not go to table classify"):
        p.flow("acl", 10, Match(), (A.Resubmit(table=0),))
    # prerequisite fields (eth_type, ip_proto) are always allowed
    p.flow("acl", 10, Match.of(eth_type=0x800, ip_proto=6, tcp_dst=22), ())


def test_bad_declarations_are_refused():
    with pytest.raises(PipelineError, match="not declared"):
        Pipeline((TableSpec("a", "x", next_tables=("b",)),))
    with pytest.raises(PipelineError, match="declared twice"):
        Pipeline((TableSpec("a", "x"), TableSpec("a", "y")))
    with pytest.raises(KeyError):
        TableSpec("a", "x", frozenset({"no_such_field"}))


def test_miss_flows_implement_the_declared_miss():
    p = Pipeline(SPEC)
    miss = {f.table: f.actions for f in p.miss_flows()}
    assert miss == {0: (), 1: (A.GotoTable(2),), 2: (A.Controller(),)}
