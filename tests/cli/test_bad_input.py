"""The CLI refuses bad files and arguments with one line naming the file and why, exit code 2."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def sbnet(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from sbnet.cli.main import app; app(prog_name='sbnet')",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "ok.flows").write_text("table=0,actions=output:2\n")
    (tmp_path / "back.flows").write_text("table=1,actions=goto_table:0\n")
    (tmp_path / "nested.flows").write_text("table=0,actions=" + "ct(exec(" * 2000 + "\n")
    (tmp_path / "text.pcap").write_text("not a capture\n")
    (tmp_path / "short.pcap").write_bytes(PCAP_HEADER[:10])
    (tmp_path / "cut.pcap").write_bytes(PCAP_HEADER + struct.pack("<IIII", 0, 0, 60, 60) + b"x" * 20)
    (tmp_path / "absurd.pcap").write_bytes(PCAP_HEADER + struct.pack("<IIII", 0, 0, 2**32 - 1,
                                                                     2**32 - 1) + b"x" * 10)
    return tmp_path


CASES = [
    (("replay", "missing.flows"), "missing.flows"),
    (("replay", "ok.flows", "--pcap", "missing.pcap"), "missing.pcap"),
    (("replay", "ok.flows", "--pcap", "text.pcap"), "text.pcap"),
    (("replay", "ok.flows", "--pcap", "short.pcap"), "short.pcap"),
    (("replay", "ok.flows", "--pcap", "cut.pcap"), "cut.pcap"),
    (("replay", "ok.flows", "--pcap", "absurd.pcap"), "absurd.pcap"),
    (("replay", "back.flows", "--count", "1"), "back.flows"),
    (("replay", "nested.flows", "--count", "1"), "nested.flows"),
    (("conntrack", "ok.flows", "--pcap", "text.pcap"), "text.pcap"),
    (("conntrack", "ok.flows", "--pcap", "2:missing.pcap"), "missing.pcap"),
    (("dpctl", "dump-flows", "ok.flows", "--pcap", "absurd.pcap"), "absurd.pcap"),
    (("trace", "missing.flows", "00"), "missing.flows"),
]


@pytest.mark.parametrize("args,name", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_file_is_one_line_and_exit_2(files: Path, args, name) -> None:
    r = sbnet(*args, cwd=files)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [x for x in (r.stderr + r.stdout).splitlines() if x.strip()]
    assert len(lines) == 1 and name in lines[0], lines
    assert "Traceback" not in r.stderr


def test_token_file_roles_as_a_string(tmp_path: Path) -> None:
    from sbnet.api.context import StaticTokens
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("t1:\n  project_id: p\n  roles: admin\n")
    assert StaticTokens.from_file(tokens).validate("t1").roles == ("admin",)
    tokens.write_text("t1: [1, 2\n")
    with pytest.raises(ValueError, match="tokens.yaml"):
        StaticTokens.from_file(tokens)
