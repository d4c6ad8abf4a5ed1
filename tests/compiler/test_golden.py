"""Compiled pipelines of recorded models stay what golden/flows.txt says (refactors change no flow)."""

from __future__ import annotations

import difflib

from tests.compiler.golden_dump import FLOWS, dump, load_models


def test_compiled_pipelines_equal_the_golden_dump():
    want = FLOWS.read_text()
    got = dump(load_models())
    if got != want:
        diff = "".join(list(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                                 "golden/flows.txt", "compiled"))[:80])
        raise AssertionError("compiled flows differ from tests/compiler/golden/flows.txt "
                             "(if the change is meant, regenerate with `python -m "
                             "tests.compiler.golden_dump --update` and review):\n" + diff)
