"""Compare Neutron's resources with sbnet's copy and repair the copy: the full sync, as ML2/OVN's db-sync.

Neutron is the truth.  A resource Neutron has and the copy lacks, or holds at another revision,
is written again; one the copy has and Neutron does not is deleted.  Used by the maintenance
worker inside neutron-server and by `sbnet neutron-sync`."""

from __future__ import annotations

from dataclasses import dataclass, field

from sbnet.southbound.client import Southbound

# Neutron's collections (REST path) and the store type of each, parents before children.
COLLECTIONS = (
    ("networks", "network"), ("subnets", "subnet"), ("security-groups", "security_group"),
    ("security-group-rules", "security_group_rule"), ("qos/policies", "policy"),
    ("ports", "port"), ("routers", "router"), ("floatingips", "floatingip"),
    ("trunks", "trunk"), ("sfc/flow_classifiers", "flow_classifier"),
    ("sfc/port_pairs", "port_pair"), ("sfc/port_pair_groups", "port_pair_group"),
    ("sfc/port_chains", "port_chain"),
)
ORDER = [typ for _, typ in COLLECTIONS]


def revision(body: dict) -> int:
    """Neutron's revision of a resource; networking-sfc's resources have none (0)."""
    return body.get("revision_number") or 0


@dataclass
class Drift:
    """What differs: (type, id) pairs, and for stale ones both revisions."""

    missing: list[tuple[str, str]] = field(default_factory=list)
    stale: list[tuple[str, str, int, int | None]] = field(default_factory=list)
    extra: list[tuple[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.missing) + len(self.stale) + len(self.extra)

    def lines(self) -> list[str]:
        out = [f"missing in sbnet: {t} {i}" for t, i in self.missing]
        out += [f"stale in sbnet: {t} {i} (Neutron revision {n}, copy {c})"
                for t, i, n, c in self.stale]
        out += [f"not in Neutron: {t} {i}" for t, i in self.extra]
        return out


def compare(neutron: dict[str, dict[str, dict]], copy: dict[str, dict[str, dict]]) -> Drift:
    """neutron: type -> id -> body (only the types Neutron serves); copy: the inventory
    (type -> id -> {"revision_number"}).  Types Neutron does not serve are left alone."""
    drift = Drift()
    for typ in ORDER:
        if typ not in neutron:
            continue
        have = copy.get(typ, {})
        for ident, body in sorted(neutron[typ].items()):
            if ident not in have:
                drift.missing.append((typ, ident))
            elif have[ident].get("revision_number") != revision(body):
                drift.stale.append((typ, ident, revision(body),
                                    have[ident].get("revision_number")))
        drift.extra += [(typ, i) for i in sorted(set(have) - set(neutron[typ]))]
    return drift


def repair(drift: Drift, neutron: dict[str, dict[str, dict]], sb: Southbound) -> int:
    """Make the copy equal Neutron's: write missing and stale resources (parents first),
    delete extra ones (children first).  Returns the number of writes."""
    done = 0
    rank = {t: n for n, t in enumerate(ORDER)}
    for typ, ident, _, copy_rev in drift.stale:
        if copy_rev is None or copy_rev > revision(neutron[typ][ident]):
            sb.delete(typ, ident)      # newer than the truth, or made by sbnet: start over
    for typ, ident in sorted([*drift.missing, *((t, i) for t, i, _, _ in drift.stale)],
                             key=lambda x: rank[x[0]]):
        body = neutron[typ][ident]
        sb.put(typ, dict(body, revision_number=revision(body)))
        done += 1
    for typ, ident in sorted(drift.extra, key=lambda x: -rank[x[0]]):
        sb.delete(typ, ident)
        done += 1
    return done


def read_neutron_rest(request) -> dict[str, dict[str, dict]]:
    """Neutron's resources through its REST API; `request(path)` returns the decoded body or
    None when Neutron does not serve that collection (its extension is not loaded)."""
    out: dict[str, dict[str, dict]] = {}
    for path, typ in COLLECTIONS:
        body = request(path)
        if body is None:
            continue
        key = path.rsplit("/", 1)[-1].replace("-", "_")
        out[typ] = {item["id"]: item for item in body[key]}
    return out
