"""`daitn trace` on truncated and corrupted run directories and captures (issue #8).

Each broken input exits 2 with one line that names the file, says what is wrong and
what to do - no traceback; a capture whose last record is cut off (tcpdump stopped
while writing: a killed run) is decoded up to it with a warning. A property test cuts
and corrupts a real capture at random places: the answer is a summary or a TraceError,
never another exception, and a cut capture never yields more messages than the whole.
"""
from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, Ether, wrpcap

from nodes import wire
from nodes.transport import Endpoint
from nodes.wire import Message, MsgType, Tlv
from testbed import trace
from testbed.trace import TraceError

REPO = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))
PCAP = "h2-eth0~s2-eth2.pcap"


def _packets() -> list:
    """Four UDP control messages, then a model of 3 chunks over one TCP stream."""
    h1, h2 = Endpoint(1, KEY), Endpoint(2, KEY)
    pkts = []
    for i in range(4):
        m = Message(MsgType.TRAIN_REQUEST, task_id=7, tlvs={Tlv.TARGET_ACCURACY: 0.85}, body=wire.TrainRequest(i))
        p = Ether() / IP(src="10.0.0.1", dst=wire.DCC_IP) / UDP(sport=40000, dport=7070) / h1.seal(m)
        p.time = 1.0 + i
        pkts.append(p)
    state = bytes(random.Random(1).randbytes(3000))
    stream = b"".join(h2.seal(Message(MsgType.MODEL_CHUNK, task_id=7, model_version=2, dst=4,
                                      flags=wire.LAST if off == 2000 else 0, body=state[off:off + 1000],
                                      tlvs={Tlv.MODEL_DIGEST: b"\0" * 32, Tlv.CHUNK: wire.Chunk(off, 3000)}))
                      for off in range(0, 3000, 1000))
    syn = Ether() / IP(src="10.0.0.2", dst="10.0.0.4") / TCP(sport=45000, dport=7000, flags="S", seq=999)
    syn.time = 10.0
    pkts.append(syn)
    for i, off in enumerate(range(0, len(stream), 700)):
        p = Ether() / IP(src="10.0.0.2", dst="10.0.0.4") / TCP(sport=45000, dport=7000, flags="PA",
                                                               seq=1000 + off) / stream[off:off + 700]
        p.time = 10.0 + 0.001 * (i + 1)
        pkts.append(p)
    return pkts


PACKETS = _packets()


@pytest.fixture
def run_dir(tmp_path) -> Path:
    d = tmp_path / "run"
    (d / "pcaps").mkdir(parents=True)
    (d / "auth.key").write_bytes(KEY)
    (d / "summary.json").write_text(json.dumps({"tasks": []}))
    wrpcap(str(d / "pcaps" / PCAP), PACKETS)
    return d


def daitn_trace(*args) -> subprocess.CompletedProcess:
    """The CLI in this process (an exception escaping it fails the test as a traceback would)."""
    import contextlib
    import io
    from testbed.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["trace", *map(str, args)])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_cli_process_exit_code_and_message(tmp_path):
    """Once as a real process: exit 2, the message, no traceback."""
    f = tmp_path / "x.pcap"
    f.write_bytes(b"")
    r = subprocess.run([sys.executable, "-m", "testbed.cli", "trace", str(f)], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "empty file" in r.stderr, r.stderr


def assert_refused(path, *fragments):
    """exit 2, one clear line on stderr naming the file and the fragments, no traceback."""
    r = daitn_trace(path)
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and r.stdout == "", r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("daitn trace: "), line
    for f in fragments:
        assert f in line, (f, line)
    return line


def _record_offsets(data: bytes) -> list[int]:
    offs, off = [], 24
    while off < len(data):
        offs.append(off)
        off += 16 + struct.unpack("<I", data[off + 8:off + 12])[0]
    return offs


def test_intact_run_decodes(run_dir):
    s = trace.summarize(run_dir)
    assert s["authenticated"] and s["warnings"] == []
    assert s["by_type"]["TRAIN_REQUEST"]["messages"] == 4 and s["by_type"]["MODEL_CHUNK"]["messages"] == 3
    assert trace.summarize(run_dir / "pcaps")["by_type"] == s["by_type"]   # RUN/pcaps given directly


def test_cut_off_last_record_is_a_warning_not_an_error(run_dir):
    pcap = run_dir / "pcaps" / PCAP
    data = pcap.read_bytes()
    last = _record_offsets(data)[-1]
    for cut, where in ((len(data) - 100, "bytes)"), (last + 7, "inside its header")):
        pcap.write_bytes(data[:cut])
        r = daitn_trace(run_dir, "--json")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        s = json.loads(r.stdout)
        assert len(s["warnings"]) == 1 and "last record" in s["warnings"][0] and where in s["warnings"][0]
        assert PCAP in s["warnings"][0] and "stopped while writing" in s["warnings"][0]
        assert s["by_type"]["TRAIN_REQUEST"]["messages"] == 4
        assert s["stats"].get("truncated_tcp") == 1 or s["stats"].get("tcp_gaps"), s["stats"]
        r = daitn_trace(run_dir)
        assert r.returncode == 0 and "warning: " in r.stdout and "last record" in r.stdout


def test_empty_capture(run_dir):
    (run_dir / "pcaps" / PCAP).write_bytes(b"")
    assert_refused(run_dir, PCAP, "empty file", "never started")


def test_capture_cut_inside_its_file_header(run_dir):
    pcap = run_dir / "pcaps" / PCAP
    pcap.write_bytes(pcap.read_bytes()[:13])
    assert_refused(run_dir, PCAP, "cut off inside its 24-byte file header")


def test_not_a_capture(tmp_path):
    f = tmp_path / "notes.pcap"
    f.write_text("these are my notes, not packets\n")
    assert_refused(f, str(f), "not a readable pcap", "pass a run directory")


def test_corrupted_record_in_the_middle(run_dir):
    pcap = run_dir / "pcaps" / PCAP
    data = bytearray(pcap.read_bytes())
    third = _record_offsets(bytes(data))[2]
    data[third + 8:third + 12] = struct.pack("<I", 0x00FFFFFF)   # captured length: 16 MiB
    pcap.write_bytes(bytes(data))
    line = assert_refused(run_dir, PCAP, "packet 3", "corrupted after 2 good packets", "editcap")
    assert f"byte {third}" in line


def test_damaged_key(run_dir):
    (run_dir / "auth.key").write_bytes(KEY[:5])
    assert_refused(run_dir, "auth.key", "5 bytes", "corrupted", "move it away")


def test_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "stuff").mkdir()
    assert_refused(tmp_path / "stuff", "not a run directory", "summary.json")


def test_run_without_captures(run_dir):
    for p in (run_dir / "pcaps").iterdir():
        p.unlink()
    assert_refused(run_dir, "pcaps", "no captures", "capture:")
    (run_dir / "pcaps").rmdir()
    assert_refused(run_dir, "pcaps: missing", "captured nothing")


def test_capture_that_is_a_directory(run_dir):
    (run_dir / "pcaps" / "odd.pcap").mkdir()
    assert_refused(run_dir, "odd.pcap", "cannot be read")
    assert_refused(run_dir / "pcaps" / "odd.pcap", "not a run directory")


def test_missing_path(tmp_path):
    assert_refused(tmp_path / "gone", "no such capture file or run directory")


def test_pcapng_decodes_too(run_dir, tmp_path):
    from scapy.utils import wrpcapng
    ng = tmp_path / "x.pcapng"
    wrpcapng(str(ng), PACKETS)
    assert trace.summarize(ng)["by_type"]["MODEL_CHUNK"]["messages"] == 3


# ---- property: any cut, any corruption --------------------------------------------------

FULL = None


def _full_counts(tmp: Path) -> tuple[bytes, int]:
    global FULL
    if FULL is None:
        p = tmp / "full.pcap"
        wrpcap(str(p), PACKETS)
        s = trace.summarize(p)
        FULL = (p.read_bytes(), sum(v["messages"] for v in s["by_type"].values()))
    return FULL


def _answer(path: Path):
    try:
        return trace.summarize(path)
    except TraceError as e:
        assert str(path) in str(e) and "Traceback" not in str(e)
        return e


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trace-fuzz")


PROPERTY = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture],
                    max_examples=60 if os.environ.get("DAITN_HYPOTHESIS", "ci") == "ci" else 600)


@PROPERTY
@given(cut=st.floats(0, 1))
def test_any_cut(scratch, cut):
    data, full = _full_counts(scratch)
    p = scratch / "cut.pcap"
    p.write_bytes(data[:int(len(data) * cut)])
    got = _answer(p)
    if isinstance(got, dict):
        assert sum(v["messages"] for v in got["by_type"].values()) <= full


@PROPERTY
@given(edits=st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=8)), min_size=1, max_size=6))
def test_any_corruption(scratch, edits):
    data, _ = _full_counts(scratch)
    buf = bytearray(data)
    for where, junk in edits:
        i = int(where * (len(buf) - 1))
        buf[i:i + len(junk)] = junk
    p = scratch / "corrupt.pcap"
    p.write_bytes(bytes(buf))
    _answer(p)
