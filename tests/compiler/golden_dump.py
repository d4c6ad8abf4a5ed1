"""Golden pipelines: a few recorded models compiled and printed, normalised (tables by name, no cookies, lines sorted).

Regenerate after a deliberate change of compiled output, and read the diff:
    python -m tests.compiler.golden_dump --update
The models (golden/models.json) are snapshots the compiler tests built through the API, chosen so
that together they show the flow shapes of every stage; tests/compiler/test_golden.py compiles
them and compares with golden/flows.txt.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from sbnet.compiler.compile import compile_host
from sbnet.compiler.tables import PIPELINE
from sbnet.compiler.topology import Chassis, Topology
from sbnet.flows.ofctl import format_flow, format_group, format_meter

HERE = Path(__file__).parent / "golden"
MODELS, FLOWS = HERE / "models.json", HERE / "flows.txt"
_TABLE = re.compile(r"(\btable=|goto_table:|resubmit\(,)(\d+)")
_COOKIE = re.compile(r"cookie=0x[0-9a-f]+,?")


def _name(m: re.Match) -> str:
    return m.group(1) + PIPELINE.spec(int(m.group(2))).name


def normalise(line: str) -> str:
    return _TABLE.sub(_name, _COOKIE.sub("", line)).strip()


def dump(models: list[dict]) -> str:
    """The normalised pipelines of the models, one section per (model, host)."""
    out = []
    for m in models:
        chassis = [Chassis(**c) for c in m["chassis"]]
        hp = compile_host(Topology(m["snapshot"], chassis), m["host"])
        out.append(f"## {m['name']} on {m['host']}: {len(hp.flows)} flows")
        out += sorted(normalise(format_flow(f)) for f in hp.flows.values())
        out += [normalise(format_group(hp.groups[g])) for g in sorted(hp.groups)]
        out += [normalise(format_meter(hp.meters[k])) for k in sorted(hp.meters)]
    return "\n".join(out) + "\n"


def load_models() -> list[dict]:
    return json.loads(MODELS.read_text())


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python -m tests.compiler.golden_dump --update")
    FLOWS.write_text(dump(load_models()))
    print(f"wrote {FLOWS}")
