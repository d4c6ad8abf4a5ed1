"""networking-sfc drivers `sbnet`: port pairs, groups, flow classifiers and chains into sbnet's copy (the compiler's chains stage).

networking-sfc's resources carry no revision number: they are written with revision 0,
so the full sync finds SFC resources missing from the copy or extra in it, not changed ones
(each change is written when networking-sfc commits it)."""

from __future__ import annotations

from networking_sfc.services.flowclassifier.drivers import base as fc_base
from networking_sfc.services.sfc.drivers import base as sfc_base

from sbnet.neutron import push


def _put(typ: str, context) -> None:
    push.put(typ, dict(context.current, revision_number=context.current.get("revision_number", 0)))


class SbnetSfcDriver(sfc_base.SfcDriverBase):
    def initialize(self) -> None:
        pass

    def create_port_chain(self, context) -> None:
        _put("port_chain", context)

    update_port_chain = create_port_chain

    def delete_port_chain(self, context) -> None:
        push.delete("port_chain", context.current["id"])

    def create_port_pair(self, context) -> None:
        _put("port_pair", context)

    update_port_pair = create_port_pair

    def delete_port_pair(self, context) -> None:
        push.delete("port_pair", context.current["id"])

    def create_port_pair_group(self, context) -> None:
        _put("port_pair_group", context)

    update_port_pair_group = create_port_pair_group

    def delete_port_pair_group(self, context) -> None:
        push.delete("port_pair_group", context.current["id"])


class SbnetFlowClassifierDriver(fc_base.FlowClassifierDriverBase):
    def initialize(self) -> None:
        pass

    def create_flow_classifier_precommit(self, context) -> None:
        pass

    def create_flow_classifier(self, context) -> None:
        _put("flow_classifier", context)

    update_flow_classifier = create_flow_classifier

    def delete_flow_classifier(self, context) -> None:
        push.delete("flow_classifier", context.current["id"])
