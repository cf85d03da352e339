"""`daitn trace` on synthetic captures: UDP control, a TCP model stream split
across segments with a retransmission, tag verification with the run key."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.all import IP, TCP, UDP, Ether, wrpcap

from nodes import wire
from nodes.transport import Endpoint
from nodes.wire import Message, MsgType, Tlv
from testbed import trace

KEY = os.urandom(32)
REPO = Path(__file__).resolve().parents[2]


def _udp(ep, msg, t):
    p = Ether() / IP(src="10.0.0.1", dst=wire.DCC_IP) / UDP(sport=40000, dport=7070) / ep.seal(msg)
    p.time = t
    return p


def _tcp_stream(data: bytes, seg: int, t0: float, retransmit_at: int):
    pkts = []
    isn = 1000
    syn = Ether() / IP(src="10.0.0.2", dst="10.0.0.4") / TCP(sport=45000, dport=7000, flags="S", seq=isn - 1)
    syn.time = t0
    pkts.append(syn)
    for i, off in enumerate(range(0, len(data), seg)):
        p = Ether() / IP(src="10.0.0.2", dst="10.0.0.4", tos=12 << 2) / \
            TCP(sport=45000, dport=7000, flags="PA", seq=isn + off) / data[off:off + seg]
        p.time = t0 + 0.001 * (i + 1)
        pkts.append(p)
        if i == retransmit_at:
            pkts.append(p.copy())
    return pkts


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    (d / "pcaps").mkdir(parents=True)
    (d / "auth.key").write_bytes(KEY)
    h1, h2 = Endpoint(1, KEY), Endpoint(2, KEY)
    pkts = [_udp(h1, Message(MsgType.TRAIN_REQUEST, task_id=7, tlvs={Tlv.TARGET_ACCURACY: 0.85},
                             body=wire.TrainRequest(3000)), 1.0)]
    state = os.urandom(3000)
    stream = b""
    for off in range(0, 3000, 1000):
        stream += h2.seal(Message(MsgType.MODEL_CHUNK, task_id=7, model_version=2, dst=4,
                                  flags=wire.LAST if off == 2000 else 0, body=state[off:off + 1000],
                                  tlvs={Tlv.MODEL_DIGEST: b"\0" * 32, Tlv.CHUNK: wire.Chunk(off, 3000)}))
    pkts += _tcp_stream(stream, 700, 2.0, retransmit_at=1)
    wrpcap(str(d / "pcaps" / "h2-eth0~s2-eth2.pcap"), pkts)
    return d


def test_counts_per_type_task_and_link(run_dir):
    s = trace.summarize(run_dir)
    assert s["authenticated"]
    assert s["by_type"]["TRAIN_REQUEST"]["messages"] == 1
    assert s["by_type"]["MODEL_CHUNK"]["messages"] == 3  # reassembled across 700-byte segments
    assert s["by_task"]["7"]["messages"] == 4
    assert s["by_link"]["h2-eth0~s2-eth2"]["messages"] == 4
    assert s["stats"]["tcp_retransmissions"] == 1
    assert not s["stats"].get("undecodable_tcp") and not s["stats"].get("tcp_gaps")


def test_model_journey(run_dir):
    (m,) = trace.summarize(run_dir)["models"]
    assert (m["task"], m["model_version"], m["message"]) == (7, 2, "MODEL_CHUNK")
    (hop,) = m["links"]
    assert (hop["from"], hop["to"], hop["chunks"]) == ("h2", "h4", 3)
    assert hop["bytes"] > 3000


def test_wrong_key_fails_verification(run_dir):
    (run_dir / "auth.key").write_bytes(os.urandom(32))
    s = trace.summarize(run_dir)
    assert s["stats"]["auth_failures"] == 4
    assert not s["by_type"]


def test_single_pcap_without_key_decodes_unverified(run_dir):
    s = trace.summarize(next((run_dir / "pcaps").iterdir()))
    assert not s["authenticated"] and s["by_type"]["MODEL_CHUNK"]["messages"] == 3


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(trace.TraceError, match="no such capture"):
        trace.summarize(tmp_path / "nope.pcap")
    with pytest.raises(trace.TraceError, match="not a run directory"):
        trace.summarize(tmp_path)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a pcap at all")
    with pytest.raises(trace.TraceError, match="not a readable pcap"):
        trace.summarize(bad)


def test_cli_json_and_exit_codes(run_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "testbed.cli", "trace", str(run_dir), "--json"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["by_type"]["MODEL_CHUNK"]["messages"] == 3
    r = subprocess.run([sys.executable, "-m", "testbed.cli", "trace", str(tmp_path / "missing")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "no such capture" in r.stderr and "Traceback" not in r.stderr
