"""Tests for the Wireshark Lua dissector of DA-ITN v3 (tools/wireshark/daitn.lua).

The messages are built here with ``struct`` straight from docs/protocol.md,
independently of nodes/wire.py, written to pcaps with scapy and read back by
``tshark -X lua_script:...``. When nodes/wire.py is present, a second test
encodes every message type with it and checks that the dissector agrees.

Skipped when tshark is missing or cannot run Lua scripts (e.g. a build
without Lua). Running as root is fine: tshark 4.0 prints a warning and runs
Lua plugins anyway.
"""
import hashlib
import math
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LUA = REPO / "tools" / "wireshark" / "daitn.lua"
TSHARK = shutil.which("tshark")

SEP = "\x1f"   # field separator in `-T fields` output
AGG = "\x1e"   # separator between occurrences of one field


def _tshark_runs_lua() -> str:
    """'' when tshark can run a trivial Lua script, else why not."""
    if TSHARK is None:
        return "tshark is not installed"
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "probe.lua"
        probe.write_text('print("DAITN_LUA_PROBE_OK")\n')
        try:
            out = subprocess.run([TSHARK, "-X", f"lua_script:{probe}", "-v"],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"tshark does not run: {e}"
    if "DAITN_LUA_PROBE_OK" not in out.stdout:
        return "this tshark does not run Lua scripts " + (
            "(as root? Lua may be disabled for root)" if os.geteuid() == 0 else "")
    return ""


_WHY_NOT = _tshark_runs_lua()
pytestmark = pytest.mark.skipif(bool(_WHY_NOT), reason=_WHY_NOT or "ok")

scapy_all = pytest.importorskip("scapy.all")
Ether, IP, UDP, TCP, Raw, wrpcap = (scapy_all.Ether, scapy_all.IP, scapy_all.UDP,
                                    scapy_all.TCP, scapy_all.Raw, scapy_all.wrpcap)

# --- DA-ITN v3, from docs/protocol.md -----------------------------------------

AUTH, LAST, REPLY = 0x01, 0x02, 0x04
HDR = struct.Struct(">2sBBBBBBIIIHHIII")
assert HDR.size == 36

(KNOWLEDGE_REPORT, TRAIN_REQUEST, FEASIBILITY, ITINERARY, MODEL_CHUNK, ACK, EVAL_REQUEST,
 EVAL_VERDICT, TASK_RESULT, INFERENCE_QUERY, INFERENCE_RESULT, ERROR) = range(1, 13)
TYPE_NAMES = ["KNOWLEDGE_REPORT", "TRAIN_REQUEST", "FEASIBILITY", "ITINERARY", "MODEL_CHUNK",
              "ACK", "EVAL_REQUEST", "EVAL_VERDICT", "TASK_RESULT", "INFERENCE_QUERY",
              "INFERENCE_RESULT", "ERROR"]


def tlv(t: int, value: bytes) -> bytes:
    return struct.pack(">BB", t, len(value)) + value


def t_target(acc_raw):   return tlv(1, struct.pack(">H", acc_raw))
def t_deadline(ms):      return tlv(2, struct.pack(">Q", ms))
def t_max_latency(ms):   return tlv(3, struct.pack(">I", ms))
def t_min_acc(acc_raw):  return tlv(4, struct.pack(">H", acc_raw))
def t_privacy(level):    return tlv(5, struct.pack(">B", level))
def t_labels(labels):    return tlv(6, bytes(labels))
def t_max_hops(n):       return tlv(7, struct.pack(">B", n))
def t_budget(n):         return tlv(8, struct.pack(">Q", n))
def t_digest(d):         return tlv(17, d)
def t_chunk(off, total): return tlv(18, struct.pack(">QQ", off, total))
def t_transport(dscp):   return tlv(19, struct.pack(">BBH", dscp, 0, 0))
def t_parties(c, m):     return tlv(20, struct.pack(">HH", c, m))
def t_end(reason):       return tlv(21, struct.pack(">B", reason))
def t_accuracy(raw):     return tlv(22, struct.pack(">H", raw))


def t_itinerary(ptr, lap, max_laps, segments):
    return tlv(16, struct.pack(">BBBB", ptr, lap, max_laps, 0)
               + b"".join(struct.pack(">H", s) for s in segments))


def msg(mtype, *, flags=0, hop_count=0, hop_limit=0, task=0, model_id=0, mver=0, src=0, dst=0,
        seq=0, ack=0, tlvs=(), payload=b"", nonce=0, tag=b"\0" * 32, hdr_len=None,
        length=None, magic=b"DA", version=3) -> bytes:
    area = b"".join(tlvs)
    area += b"\x00" * (-len(area) % 4)            # PADs to a word boundary
    words = (36 + len(area)) // 4 if hdr_len is None else hdr_len
    head = HDR.pack(magic, version, mtype, flags, words, hop_count, hop_limit, task, model_id,
                    mver, src, dst, seq, ack, len(payload) if length is None else length)
    out = head + area + payload
    if flags & AUTH:
        out += struct.pack(">Q", nonce) + tag
    return out


def p_kr(roles, samples, vsamples, hist, *, capacity=0.0, load=0.0, queue_len=0,
         service_ms=0.0, noise_epsilon=0.0, report_seq=0, models=()):
    return (struct.pack(">BBBBIIIIffff", roles, len(hist), len(models), 0, samples, vsamples,
                        report_seq, queue_len, capacity, load, service_ms, noise_epsilon)
            + b"".join(struct.pack(">I", x) for x in list(hist) + list(models)))


def p_feas(feasible, secs, nbytes, reasons):
    out = struct.pack(">BfQB", feasible, secs, nbytes, len(reasons))
    for r in reasons:
        b = r.encode()
        out += struct.pack(">H", len(b)) + b
    return out


def p_itin(policy):
    b = policy.encode()
    return struct.pack(">B", len(b)) + b


def p_verdict(acc, loss, samples, per_class):
    return struct.pack(">ffIB", acc, loss, samples, len(per_class)) + b"".join(
        struct.pack(">f", x) for x in per_class)


def p_query(features):
    return struct.pack(">H", len(features)) + b"".join(struct.pack(">f", x) for x in features)


def p_error(code, text):
    b = text.encode()
    return struct.pack(">HH", code, len(b)) + b


NAN = float("nan")
DIGEST = hashlib.sha256(b"model state").digest()
TAG = hashlib.sha256(b"tag").digest()
DEADLINE = 1_735_689_600_123

# Each case: (bytes, {display-filter field: expected occurrences in order}).
# The header fields common to all are added by `case()`.
CASES = []


def case(mtype, fields, **kw):
    m = msg(mtype, **kw)
    area_len = len(b"".join(kw.get("tlvs", ())))
    hdr = {
        "daitn.magic": [0x4441], "daitn.version": [3], "daitn.type": [mtype],
        "daitn.flags": [kw.get("flags", 0)],
        "daitn.flags.auth": [kw.get("flags", 0) & AUTH and 1],
        "daitn.flags.last": [kw.get("flags", 0) & LAST and 1],
        "daitn.flags.reply": [kw.get("flags", 0) & REPLY and 1],
        "daitn.hdr_len": [(36 + area_len + (-area_len % 4)) // 4],
        "daitn.hop_count": [kw.get("hop_count", 0)], "daitn.hop_limit": [kw.get("hop_limit", 0)],
        "daitn.task_id": [kw.get("task", 0)], "daitn.model_id": [kw.get("model_id", 0)],
        "daitn.model_version": [kw.get("mver", 0)], "daitn.src": [kw.get("src", 0)],
        "daitn.dst": [kw.get("dst", 0)], "daitn.seq": [kw.get("seq", 0)],
        "daitn.ack": [kw.get("ack", 0)], "daitn.length": [len(kw.get("payload", b""))],
    }
    types, lens, area = [], [], b"".join(kw.get("tlvs", ()))
    while area:
        types.append(area[0])
        lens.append(area[1])
        area = area[2 + area[1]:]
    hdr["daitn.tlv.type"], hdr["daitn.tlv.len"] = types, lens
    if kw.get("flags", 0) & AUTH:
        hdr["daitn.auth.nonce"] = [kw["nonce"]]
        hdr["daitn.auth.tag"] = [kw["tag"]]
    hdr.update(fields)
    CASES.append((m, hdr))
    return m


case(KNOWLEDGE_REPORT, {
    "daitn.kr.roles": [0x1D], "daitn.kr.roles.data": [1], "daitn.kr.roles.mpvu": [0],
    "daitn.kr.roles.client": [1], "daitn.kr.roles.compute": [1], "daitn.kr.roles.inference": [1],
    "daitn.kr.n": [4], "daitn.kr.n_models": [2], "daitn.kr.reserved": [0],
    "daitn.kr.samples": [1200], "daitn.kr.verification_samples": [300],
    "daitn.kr.report_seq": [4_000_000_001], "daitn.kr.queue_len": [7],
    "daitn.kr.capacity": [2.5], "daitn.kr.load": [1.25], "daitn.kr.service_ms": [3.75],
    "daitn.kr.noise_epsilon": [0.5],
    "daitn.kr.hist": [10, 20, 0, 4_000_000_000], "daitn.kr.model": [42, 4_294_967_295]},
    flags=REPLY, src=3, dst=0xFFFE, seq=17,
    payload=p_kr(0x1D, 1200, 300, [10, 20, 0, 4_000_000_000], capacity=2.5, load=1.25,
                 queue_len=7, service_ms=3.75, noise_epsilon=0.5, report_seq=4_000_000_001,
                 models=[42, 4_294_967_295]))
case(TRAIN_REQUEST, {
    "daitn.target_accuracy": [0.85], "daitn.deadline": [DEADLINE], "daitn.privacy": [1],
    "daitn.required_label": [0, 3, 9], "daitn.max_hops": [6], "daitn.byte_budget": [5_000_000_000],
    "daitn.treq.model_bytes": [123_456_789_012]},
    task=7, src=1, dst=0xFFFE, seq=1,
    tlvs=[t_target(8500), t_deadline(DEADLINE), t_privacy(1), t_labels([0, 3, 9]), t_max_hops(6),
          t_budget(5_000_000_000)],
    payload=struct.pack(">Q", 123_456_789_012))
case(FEASIBILITY, {
    "daitn.feas.feasible": [1], "daitn.feas.est_seconds": [12.5],
    "daitn.feas.est_bytes": [987_654_321], "daitn.feas.reason": ["ok", "büdget fine"]},
    flags=REPLY, task=7, src=0xFFFE, dst=1, ack=1,
    payload=p_feas(1, 12.5, 987_654_321, ["ok", "büdget fine"]))
case(ITINERARY, {
    "daitn.itin.policy": ["greedy-latency"], "daitn.itin.ptr": [1], "daitn.itin.lap": [0],
    "daitn.itin.max_laps": [3], "daitn.itin.segment": [1, 4, 2, 5], "daitn.dscp": [46],
    "daitn.client": [1], "daitn.mpvu": [9]},
    task=7, model_id=70, src=0xFFFE, dst=1, hop_limit=12,
    tlvs=[t_itinerary(1, 0, 3, [1, 4, 2, 5]), t_transport(46), t_parties(1, 9)],
    payload=p_itin("greedy-latency"))
CHUNK_DATA = bytes(range(256)) * 2
case(MODEL_CHUNK, {
    "daitn.digest": [DIGEST], "daitn.chunk.offset": [262_144], "daitn.chunk.total": [300_000],
    "daitn.itin.ptr": [0], "daitn.itin.lap": [1], "daitn.itin.max_laps": [2],
    "daitn.itin.segment": [1, 4], "daitn.target_accuracy": [0.9], "daitn.deadline": [DEADLINE],
    "daitn.client": [1], "daitn.mpvu": [9], "daitn.chunk.data": [CHUNK_DATA]},
    flags=AUTH | LAST, hop_count=2, hop_limit=8, task=7, model_id=70, mver=3, src=1, dst=4,
    seq=5, ack=4, nonce=2**63 + 5, tag=TAG,
    tlvs=[t_target(9000), t_deadline(DEADLINE), t_itinerary(0, 1, 2, [1, 4]), t_digest(DIGEST),
          t_chunk(262_144, 300_000), t_parties(1, 9)],
    payload=CHUNK_DATA)
case(ACK, {"daitn.ack.next_offset": [300_000], "daitn.ack.status": [0]},
     flags=REPLY, task=7, mver=3, src=4, dst=1, seq=2, ack=5, payload=struct.pack(">QB", 300_000, 0))
case(ACK, {"daitn.ack.next_offset": [0], "daitn.ack.status": [1]},
     flags=REPLY, task=7, mver=3, src=4, dst=1, payload=struct.pack(">QB", 0, 1))
case(EVAL_REQUEST, {"daitn.digest": [DIGEST], "daitn.chunk.offset": [0],
                    "daitn.chunk.total": [4], "daitn.chunk.data": [b"\x01\x02\x03\x04"]},
     task=7, mver=3, src=4, dst=9, tlvs=[t_digest(DIGEST), t_chunk(0, 4)], payload=b"\x01\x02\x03\x04")
case(EVAL_VERDICT, {
    "daitn.verdict.accuracy": [0.875], "daitn.verdict.loss": [0.25],
    "daitn.verdict.samples": [500], "daitn.verdict.per_class": [0.5, NAN, 1.0]},
    flags=REPLY, task=7, mver=3, src=9, dst=4, payload=p_verdict(0.875, 0.25, 500, [0.5, NAN, 1.0]))
case(TASK_RESULT, {
    "daitn.end_reason": [1], "daitn.accuracy": [0.9123], "daitn.digest": [DIGEST],
    "daitn.chunk.offset": [0], "daitn.chunk.total": [3], "daitn.chunk.data": [b"xyz"]},
    flags=LAST, task=7, mver=9, src=5, dst=1,
    tlvs=[t_digest(DIGEST), t_chunk(0, 3), t_end(1), t_accuracy(9123)], payload=b"xyz")
case(INFERENCE_QUERY, {
    "daitn.max_latency": [250], "daitn.min_accuracy": [0.7], "daitn.privacy": [2],
    "daitn.query.feature": [1.5, -2.25, 0.0]},
    src=2, dst=5, tlvs=[t_max_latency(250), t_min_acc(7000), t_privacy(2)],
    payload=p_query([1.5, -2.25, 0.0]))
case(INFERENCE_RESULT, {
    "daitn.result.label": [7], "daitn.result.confidence": [0.75], "daitn.result.service_ms": [3.5]},
    flags=REPLY, src=5, dst=2, payload=struct.pack(">Bff", 7, 0.75, 3.5))
case(ERROR, {"daitn.error.code": [404], "daitn.error.len": [14],
             "daitn.error.text": ["no route to h9"]},
     src=0xFFFE, dst=0xFFFF, payload=p_error(404, "no route to h9"))
# an empty string prints as nothing in `-T fields`; test_display_filters checks it is there
case(ERROR, {"daitn.error.code": [1], "daitn.error.len": [0], "daitn.error.text": []},
     src=3, dst=4, payload=p_error(1, ""))
# an empty MODEL_CHUNK (resume probe) with a lower target accuracy
case(MODEL_CHUNK, {"daitn.target_accuracy": [0.75], "daitn.chunk.offset": [0],
                   "daitn.chunk.total": [300_000], "daitn.digest": [DIGEST]},
     task=8, src=1, dst=4, mver=3,
     tlvs=[t_target(7500), t_digest(DIGEST), t_chunk(0, 300_000)])
# a bare heartbeat: every field at its default but report_seq, no histogram, no models
case(KNOWLEDGE_REPORT, {
    "daitn.kr.roles": [0], "daitn.kr.roles.data": [0], "daitn.kr.roles.mpvu": [0],
    "daitn.kr.roles.client": [0], "daitn.kr.roles.compute": [0],
    "daitn.kr.roles.inference": [0], "daitn.kr.n": [0], "daitn.kr.n_models": [0],
    "daitn.kr.reserved": [0], "daitn.kr.samples": [0], "daitn.kr.verification_samples": [0],
    "daitn.kr.report_seq": [18], "daitn.kr.queue_len": [0], "daitn.kr.capacity": [0.0],
    "daitn.kr.load": [0.0], "daitn.kr.service_ms": [0.0], "daitn.kr.noise_epsilon": [0.0]},
    src=8, dst=0xFFFE, seq=18, payload=p_kr(0, 0, 0, [], report_seq=18))

GOOD = [m for m, _ in CASES]

# The display-filter names the dissector must register (docs + tools/wireshark/README.md).
FIELD_NAMES = """
daitn.magic daitn.version daitn.type daitn.flags daitn.flags.auth daitn.flags.last
daitn.flags.reply daitn.hdr_len daitn.hop_count daitn.hop_limit daitn.task_id daitn.model_id
daitn.model_version daitn.src daitn.dst daitn.seq daitn.ack daitn.length
daitn.tlv daitn.tlv.type daitn.tlv.len daitn.target_accuracy daitn.deadline daitn.max_latency
daitn.min_accuracy daitn.privacy daitn.required_label daitn.max_hops daitn.byte_budget
daitn.itin.ptr daitn.itin.lap daitn.itin.max_laps daitn.itin.segment daitn.digest
daitn.chunk.offset daitn.chunk.total daitn.dscp daitn.client daitn.mpvu daitn.end_reason
daitn.accuracy daitn.kr.roles daitn.kr.samples daitn.kr.verification_samples daitn.kr.hist
daitn.kr.n daitn.kr.n_models daitn.kr.reserved daitn.kr.report_seq daitn.kr.queue_len
daitn.kr.capacity daitn.kr.load daitn.kr.service_ms daitn.kr.noise_epsilon daitn.kr.model
daitn.treq.model_bytes daitn.feas.feasible daitn.feas.est_seconds daitn.feas.est_bytes
daitn.feas.reason daitn.itin.policy daitn.chunk.data daitn.ack.next_offset daitn.ack.status
daitn.verdict.accuracy daitn.verdict.loss daitn.verdict.samples daitn.verdict.per_class
daitn.query.feature daitn.result.label daitn.result.confidence daitn.result.service_ms
daitn.error.code daitn.error.text daitn.auth.nonce daitn.auth.tag
""".split()


# --- pcap + tshark helpers ------------------------------------------------------

def udp_frames(payloads, sport=40000, dport=7070):
    return [Ether() / IP(src="10.0.0.1", dst="10.255.255.254") / UDP(sport=sport, dport=dport)
            / Raw(p) for p in payloads]


def tshark(pcap, *args, check=True):
    cmd = [TSHARK, "-n", "-r", str(pcap), "-X", f"lua_script:{LUA}", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=300)
    if check:
        assert out.returncode == 0, out.stderr
    for bad in ("Lua Error", "Dissector error"):   # the latter: our own pcall fallback
        assert bad not in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]
    return out


def frames_matching(pcap, dfilter, *extra):
    out = tshark(pcap, *extra, "-Y", dfilter, "-T", "fields", "-e", "frame.number")
    return [int(x) for x in out.stdout.split()]


def fields(pcap, names, dfilter=None):
    """One dict per displayed frame: field -> list of occurrences (strings)."""
    args = ["-T", "fields", "-E", "occurrence=a", "-E", f"aggregator={AGG}",
            "-E", f"separator={SEP}"]
    for n in names:
        args += ["-e", n]
    if dfilter:
        args += ["-Y", dfilter]
    out = tshark(pcap, *args)
    rows = []
    for line in out.stdout.split("\n"):
        if not line:
            continue
        cols = line.split(SEP)
        assert len(cols) == len(names), line
        rows.append({n: (c.split(AGG) if c != "" else []) for n, c in zip(names, cols)})
    return rows


def same(expected, got: str) -> bool:
    if isinstance(expected, bytes):
        return bytes.fromhex(got.replace(":", "")) == expected
    if isinstance(expected, float):
        v = float(got)
        if math.isnan(expected):
            return math.isnan(v)
        return math.isclose(v, expected, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(expected, bool) or isinstance(expected, int):
        return int(got, 0) == int(expected)
    return got == expected


def check_frame(row, expected):
    for name, want in expected.items():
        got = row[name]
        assert len(got) == len(want), f"{name}: got {got!r}, want {want!r}"
        for w, g in zip(want, got):
            assert same(w, g), f"{name}: got {got!r}, want {want!r}"


@pytest.fixture(scope="module")
def good_pcap(tmp_path_factory):
    path = tmp_path_factory.mktemp("daitn") / "good.pcap"
    wrpcap(str(path), udp_frames(GOOD))
    return path


# --- the tests ------------------------------------------------------------------

def test_registers_every_documented_field():
    out = subprocess.run([TSHARK, "-G", "fields", "-X", f"lua_script:{LUA}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Lua Error" not in out.stderr
    registered = {line.split("\t")[2] for line in out.stdout.splitlines()
                  if line.startswith("F\t") and "\tdaitn" in line}
    missing = sorted(set(FIELD_NAMES) - registered)
    assert not missing, missing
    protos = [line for line in out.stdout.splitlines() if line.startswith("P\t")]
    assert any(line.split("\t")[1:3] == ["DA-ITN", "daitn"] for line in protos)


@pytest.fixture(scope="module")
def good_rows(good_pcap):
    names = sorted(set().union(*(set(e) for _, e in CASES)))
    rows = fields(good_pcap, names)
    assert len(rows) == len(CASES)
    return rows


@pytest.mark.parametrize("idx", range(len(CASES)),
                         ids=[f"{i}-{TYPE_NAMES[m[3] - 1]}" for i, (m, _) in enumerate(CASES)])
def test_every_field_decodes_to_what_was_encoded(good_rows, idx):
    row = good_rows[idx]
    expected = CASES[idx][1]
    check_frame(row, expected)
    # and no field appears that the message does not carry
    stray = {n: v for n, v in row.items() if v and n not in expected}
    assert not stray, stray


def test_good_packets_are_not_malformed(good_pcap):
    assert frames_matching(good_pcap, "daitn") == list(range(1, len(GOOD) + 1))
    assert frames_matching(good_pcap, "_ws.malformed") == []
    # warnings or errors: only the ACK that reports a digest mismatch
    assert frames_matching(good_pcap, "_ws.expert.severity >= 6291456") == [7]
    assert frames_matching(good_pcap, "_ws.expert.group == 0x07000000") == []  # malformed


def test_display_filters(good_pcap):
    types = [m[3] for m in GOOD]
    tasks = [struct.unpack(">I", m[8:12])[0] for m in GOOD]
    n = lambda pred: [i + 1 for i in range(len(GOOD)) if pred(i)]  # noqa: E731
    assert frames_matching(good_pcap, "daitn.type == 5") == n(lambda i: types[i] == 5)
    assert frames_matching(good_pcap, "daitn.task_id == 7") == n(lambda i: tasks[i] == 7)
    # TRAIN_REQUEST 0.85 and the first MODEL_CHUNK 0.9, not the resume probe (0.75)
    assert frames_matching(good_pcap, "daitn.target_accuracy > 0.8") == [2, 5]
    assert frames_matching(good_pcap, "daitn.type >= 5 && daitn.type <= 9") == n(
        lambda i: 5 <= types[i] <= 9)
    assert frames_matching(good_pcap, "daitn.flags.auth == 1") == [5]
    assert frames_matching(good_pcap, "daitn.flags.last == 1") == n(lambda i: GOOD[i][4] & LAST)
    assert frames_matching(good_pcap, "daitn.dst == 0xfffe") == [1, 2, 16]
    assert frames_matching(good_pcap, "daitn.itin.segment == 4") == [4, 5]
    assert frames_matching(good_pcap, "daitn.ack.status == 1") == [7]
    assert frames_matching(good_pcap, 'daitn.error.text contains "route"') == [13]
    assert frames_matching(good_pcap, 'daitn.error.text == ""') == [14]
    assert frames_matching(good_pcap, "daitn.chunk.offset == 262144") == [5]
    assert frames_matching(good_pcap, "daitn.accuracy >= 0.9") == [10]
    assert frames_matching(good_pcap, "daitn.kr.capacity > 2 && daitn.kr.load > 1") == [1]
    assert frames_matching(good_pcap, "daitn.kr.model == 42") == [1]
    assert frames_matching(good_pcap, "daitn.kr.report_seq == 18") == [16]
    assert frames_matching(good_pcap, "daitn.kr.noise_epsilon > 0") == [1]
    assert frames_matching(good_pcap, "daitn.kr.queue_len >= 7") == [1]


def test_info_column(good_pcap):
    rows = fields(good_pcap, ["_ws.col.Protocol", "_ws.col.Info"])
    assert all(r["_ws.col.Protocol"] == ["DA-ITN"] for r in rows)
    info = [r["_ws.col.Info"][0] for r in rows]
    for (m, _), text in zip(CASES, info):
        assert text.startswith(TYPE_NAMES[m[3] - 1] + " "), text
    assert info[0].startswith("KNOWLEDGE_REPORT task=0 h3->DCC v=0 samples=1200 load=1.25 "
                              "queue=7 report=4000000001"), info[0]
    assert info[15].startswith("KNOWLEDGE_REPORT task=0 h8->DCC v=0 samples=0 load=0.00 "
                               "queue=0 report=18"), info[15]
    assert info[4].startswith("MODEL_CHUNK task=7 h1->h4 v=3 off=262144"), info[4]
    assert "LAST" in info[4] and "AUTH" in info[4]
    assert info[12].startswith("ERROR task=0 DCC->bcast"), info[12]


# --- malformed input ------------------------------------------------------------

KR = GOOD[0]
_ACC_OK = struct.pack(">Q", 1)
# name: (bytes, a phrase the expert info must contain)
BAD = {
    "short header": (KR[:20], "fixed header is 36"),
    "truncated payload": (KR[:-3], "truncated inside the payload"),
    "truncated header TLVs": (GOOD[1][:45], "truncated inside the header"),
    "auth trailer missing": (GOOD[4][:-40], "only 0 of 40 trailer bytes"),
    "auth trailer cut": (GOOD[4][:-5], "only 35 of 40 trailer bytes"),
    "hdr_len below 9": (msg(ACK, hdr_len=8, payload=struct.pack(">QB", 1, 0)),
                        "below the 9-word fixed header"),
    "hdr_len past the data": (msg(ACK, hdr_len=40, payload=struct.pack(">QB", 1, 0)),
                              "truncated inside the header"),
    "length past the data": (msg(ACK, length=100, payload=struct.pack(">QB", 1, 0)),
                             "truncated inside the payload"),
    "unknown TLV type": (msg(TRAIN_REQUEST, tlvs=[tlv(99, b"\x01\x02")],
                             payload=struct.pack(">Q", 1)), "Unknown TLV type 99"),
    "TLV runs past hdr_len": (msg(TRAIN_REQUEST, tlvs=[b"\x02\x08" + b"\x00" * 2],
                                  payload=struct.pack(">Q", 1)), "runs past hdr_len"),
    "TLV wrong fixed length": (msg(TRAIN_REQUEST, tlvs=[tlv(1, b"\x21")],
                                   payload=struct.pack(">Q", 1)), "length 1, expected 2"),
    "ITINERARY TLV odd length": (msg(ITINERARY, tlvs=[tlv(16, b"\x00\x00\x01\x00\x00\x01\x02")],
                                     payload=p_itin("x")), "is not 4 + 2*n"),
    "KR histogram count too big": (msg(KNOWLEDGE_REPORT, payload=p_kr(1, 1, 1, [1] * 5)[:-12]),
                                   "too short for label histogram"),
    "KR models cut": (msg(KNOWLEDGE_REPORT, payload=p_kr(1, 1, 1, [1], models=[4, 5])[:-1]),
                      "too short for hosted models"),
    "KR fixed part cut": (msg(KNOWLEDGE_REPORT, payload=p_kr(1, 1, 1, [])[:35]),
                          "too short for KNOWLEDGE_REPORT"),
    "KR in the v2 layout": (msg(KNOWLEDGE_REPORT, payload=struct.pack(">BIIB", 1, 1, 1, 0)),
                            "need 36 bytes, 10 left"),
    "FEASIBILITY reason too long": (msg(FEASIBILITY, payload=struct.pack(">BfQBH", 1, 1.0, 1, 1, 50)
                                        + b"abc"), "too short for reason text"),
    "ITINERARY policy too long": (msg(ITINERARY, payload=b"\x09abc"), "too short for policy name"),
    "ERROR text too long": (msg(ERROR, payload=struct.pack(">HH", 1, 10) + b"abc"),
                            "too short for error text"),
    "ACK too short": (msg(ACK, payload=b"\x00\x01"), "too short for ACK"),
    "TRAIN_REQUEST too short": (msg(TRAIN_REQUEST, payload=b"\x00" * 7), "too short for TRAIN_REQUEST"),
    "trailing payload bytes": (msg(INFERENCE_RESULT, payload=struct.pack(">Bff", 1, 1, 1) + b"zz"),
                               "2 trailing bytes"),
    "verdict per-class cut": (msg(EVAL_VERDICT, payload=p_verdict(1, 1, 1, [1, 1, 1])[:-2]),
                              "too short for per-class"),
    "query features cut": (msg(INFERENCE_QUERY, payload=p_query([1.0, 2.0])[:-1]),
                           "too short for input features"),
    "bad magic": (msg(ACK, magic=b"XY", payload=struct.pack(">QB", 1, 0)), "Bad magic 0x5859"),
    "two messages in one datagram": (GOOD[5] + GOOD[6], "a datagram carries one message"),
    "garbage after the message": (GOOD[5] + b"\xff", "1 bytes after the"),
    "ITINERARY TLV empty": (msg(ITINERARY, tlvs=[tlv(16, b"")], payload=p_itin("x")),
                            "is not 4 + 2*n"),
    "TLV length byte past hdr_len": (msg(TRAIN_REQUEST, tlvs=[t_max_hops(1), b"\x07"],
                                         payload=_ACC_OK), "past hdr_len"),
}

# Well-formed but refused by receivers: a protocol warning, not malformed.
# name: (bytes, expert field that must be present)
WARN = {
    "TLVs out of order": (msg(TRAIN_REQUEST, tlvs=[t_privacy(1), t_target(8000)], payload=_ACC_OK),
                          "daitn.tlv_order"),
    "TLV repeated": (msg(TRAIN_REQUEST, tlvs=[t_target(8000), t_target(8100)], payload=_ACC_OK),
                     "daitn.tlv_order"),
    "PAD before a TLV": (msg(TRAIN_REQUEST, tlvs=[b"\x00", t_max_hops(3)], payload=_ACC_OK),
                         "daitn.bad_padding"),
    "4 PADs": (msg(TRAIN_REQUEST, tlvs=[t_max_hops(3), b"\x00" * 5], payload=_ACC_OK),
               "daitn.bad_padding"),
    "accuracy above 1": (msg(TRAIN_REQUEST, tlvs=[t_target(10001)], payload=_ACC_OK),
                         "daitn.out_of_range"),
    "privacy 3": (msg(TRAIN_REQUEST, tlvs=[t_privacy(3)], payload=_ACC_OK), "daitn.out_of_range"),
    "dscp 64": (msg(ITINERARY, tlvs=[t_transport(64)], payload=p_itin("p")), "daitn.out_of_range"),
    "end reason 0": (msg(TASK_RESULT, tlvs=[t_digest(DIGEST), t_chunk(0, 0), t_end(0),
                                            t_accuracy(1)]), "daitn.out_of_range"),
    "ack status 3": (msg(ACK, payload=struct.pack(">QB", 0, 3)), "daitn.out_of_range"),
    "feasible 2": (msg(FEASIBILITY, payload=p_feas(2, 1.0, 1, [])), "daitn.out_of_range"),
    "KR load negative": (msg(KNOWLEDGE_REPORT, payload=p_kr(1, 1, 0, [], load=-0.5)),
                         "daitn.out_of_range"),
    "KR capacity NaN": (msg(KNOWLEDGE_REPORT, payload=p_kr(8, 0, 0, [], capacity=NAN)),
                        "daitn.out_of_range"),
    "KR service_ms infinite": (msg(KNOWLEDGE_REPORT,
                                   payload=p_kr(16, 0, 0, [], service_ms=math.inf)),
                               "daitn.out_of_range"),
    "MODEL_CHUNK without CHUNK": (msg(MODEL_CHUNK, tlvs=[t_digest(DIGEST)], payload=b"x"),
                                  "daitn.missing_tlv"),
    "TASK_RESULT without END_REASON": (msg(TASK_RESULT, tlvs=[t_digest(DIGEST), t_chunk(0, 0),
                                                              t_accuracy(1)]), "daitn.missing_tlv"),
    "hop count over the limit": (msg(ACK, hop_count=5, hop_limit=4,
                                     payload=struct.pack(">QB", 0, 0)), "daitn.hop_limit_exceeded"),
}


def test_malformed_packets_are_flagged_not_crashing(tmp_path):
    pcap = tmp_path / "bad.pcap"
    names = list(BAD)
    wrpcap(str(pcap), udp_frames(b for b, _ in BAD.values()))
    out = tshark(pcap, "-V")          # full tree: Lua errors would show up here
    assert "Lua Error" not in out.stdout
    assert frames_matching(pcap, "daitn") == list(range(1, len(BAD) + 1))
    flagged = frames_matching(pcap, "_ws.malformed")
    missed = [names[i] for i in range(len(names)) if i + 1 not in flagged]
    assert not missed, f"not flagged malformed: {missed}"
    rows = fields(pcap, ["_ws.expert.message"])
    for name, row in zip(names, rows):
        assert any(BAD[name][1] in m for m in row["_ws.expert.message"]), (name, row)


def test_refusable_but_well_formed_messages_warn(tmp_path):
    pcap = tmp_path / "warn.pcap"
    names = list(WARN)
    wrpcap(str(pcap), udp_frames(b for b, _ in WARN.values()))
    assert frames_matching(pcap, "_ws.malformed") == []
    for i, name in enumerate(names):
        assert i + 1 in frames_matching(pcap, WARN[name][1]), name
    assert frames_matching(pcap, "_ws.expert.severity == 6291456") == list(
        range(1, len(WARN) + 1))


def test_every_tlv_at_its_largest_decodes(tmp_path):
    # every TLV once, variable ones at their largest: 624 bytes of TLVs
    tlvs = [t_target(10000), t_deadline(2**64 - 1), t_max_latency(2**32 - 1), t_min_acc(0),
            t_privacy(2), t_labels(range(255)), t_max_hops(255), t_budget(2**64 - 1),
            t_itinerary(124, 255, 255, range(1, 126)), t_digest(DIGEST),
            t_chunk(2**64 - 1, 2**64 - 1), t_transport(63), t_parties(0xFFFE, 0xFFFF), t_end(5),
            t_accuracy(10000)]
    m = msg(TASK_RESULT, tlvs=tlvs, payload=b"\xff")
    assert len(b"".join(tlvs)) == 624 and m[5] == (36 + 624) // 4
    pcap = tmp_path / "big.pcap"
    wrpcap(str(pcap), udp_frames([m]))
    assert frames_matching(pcap, "_ws.malformed || _ws.expert.severity >= 6291456") == []
    row = fields(pcap, ["daitn.itin.segment", "daitn.required_label", "daitn.deadline",
                        "daitn.chunk.offset", "daitn.target_accuracy", "daitn.itin.current"])[0]
    assert row["daitn.itin.segment"] == [str(i) for i in range(1, 126)]
    assert row["daitn.required_label"] == [str(i) for i in range(255)]
    assert row["daitn.deadline"] == row["daitn.chunk.offset"] == [str(2**64 - 1)]
    assert row["daitn.target_accuracy"] == ["1"]
    assert row["daitn.itin.current"] == ["125"]


def test_tcp_garbage_and_other_versions_do_not_crash(tmp_path):
    segs = [b"\x00" * 80, msg(ACK, version=1, payload=b"\0" * 9), GOOD[5][:20]]
    pkts = []
    for i, sgm in enumerate(segs):       # each its own connection
        pkts += tcp_stream([sgm], sport=50000 + i)
    pcap = tmp_path / "tcp_bad.pcap"
    wrpcap(str(pcap), pkts)
    tshark(pcap, "-V")
    assert frames_matching(pcap, "_ws.malformed") == [1]            # bad magic
    assert frames_matching(pcap, "daitn.bad_version") == [2]
    assert frames_matching(pcap, "daitn") == [1, 2]                 # 3: waits for more bytes


def test_other_versions_are_reported_not_misparsed(tmp_path):
    pcap = tmp_path / "old.pcap"
    v2_report = struct.pack(">BIIB", 1, 600, 0, 2) + struct.pack(">II", 300, 300)   # v2 body
    wrpcap(str(pcap), udp_frames([msg(ACK, version=1, payload=b"\0" * 9),
                                  msg(KNOWLEDGE_REPORT, version=2, payload=v2_report)]))
    assert frames_matching(pcap, "daitn.bad_version") == [1, 2]
    assert frames_matching(pcap, "daitn.ack.next_offset || daitn.kr.samples") == []
    msgs = fields(pcap, ["_ws.expert.message"])
    assert any("version 2, this dissector reads version 3" in m
               for m in msgs[1]["_ws.expert.message"]), msgs[1]


def test_every_truncation_and_random_corruption_is_safe(tmp_path):
    rng = random.Random(1234)
    cut = [m[:n] for m in GOOD for n in range(1, len(m))]
    pcap = tmp_path / "cut.pcap"
    wrpcap(str(pcap), udp_frames(cut))
    assert len(frames_matching(pcap, "_ws.malformed")) == len(cut)

    noisy = []
    for _ in range(600):
        b = bytearray(rng.choice(GOOD))
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        noisy.append(bytes(b))
    pcap = tmp_path / "noise.pcap"
    wrpcap(str(pcap), udp_frames(noisy))
    out = tshark(pcap, "-V")
    assert "Lua Error" not in out.stdout
    assert len(frames_matching(pcap, "daitn")) == len(noisy)


# --- TCP: reassembly across segments and several messages per segment ----------

def tcp_stream(chunks, *, src="10.0.0.1", dst="10.0.0.4", sport=45678, dport=7000,
               isn=1000, peer_isn=5000):
    """Segments of one direction, seq numbers consistent (no handshake needed)."""
    pkts, seq = [], isn
    for c in chunks:
        pkts.append(Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="PA",
                                                         seq=seq, ack=peer_isn) / Raw(c))
        seq += len(c)
    return pkts


def test_tcp_reassembly_and_back_to_back_messages(tmp_path):
    model = bytes(random.Random(7).getrandbits(8) for _ in range(300 * 1024))
    digest = hashlib.sha256(model).digest()
    probe = msg(MODEL_CHUNK, task=7, mver=3, src=1, dst=4, seq=1,
                tlvs=[t_digest(digest), t_chunk(0, len(model))])
    hello = msg(ERROR, task=7, src=1, dst=4, seq=2, payload=p_error(7, "hi"))
    big = msg(MODEL_CHUNK, flags=LAST | AUTH, task=7, mver=3, src=1, dst=4, seq=3, nonce=99,
              tag=TAG, tlvs=[t_target(8500), t_deadline(DEADLINE), t_itinerary(0, 0, 1, [1, 4]),
                             t_digest(digest), t_chunk(0, len(model)), t_parties(1, 9)],
              payload=model)
    tail = msg(EVAL_REQUEST, task=7, mver=3, src=1, dst=9, seq=4,
               tlvs=[t_digest(DIGEST), t_chunk(0, 2)], payload=b"ok")
    # segment 1: two small messages; then `big` over ~200 segments, the last of
    # which also carries the first half of `tail`; the final segment ends `tail`.
    mss = 1460
    stream = big + tail[:30]
    segs = [probe + hello] + [stream[i:i + mss] for i in range(0, len(stream), mss)] + [tail[30:]]
    assert len(segs) > 200
    fwd = tcp_stream(segs)
    # the other direction: two ACKs in one segment
    acks = (msg(ACK, flags=REPLY, task=7, mver=3, src=4, dst=1, seq=1, ack=1,
                payload=struct.pack(">QB", 0, 0))
            + msg(ACK, flags=REPLY, task=7, mver=3, src=4, dst=1, seq=2, ack=3,
                  payload=struct.pack(">QB", len(model), 0)))
    back = tcp_stream([acks], src="10.0.0.4", dst="10.0.0.1", sport=7000, dport=45678,
                      isn=5000, peer_isn=1000 + sum(map(len, segs)))
    pcap = tmp_path / "tcp.pcap"
    wrpcap(str(pcap), fwd + back)

    assert frames_matching(pcap, "_ws.malformed") == []
    rows = fields(pcap, ["frame.number", "daitn.type", "daitn.seq", "daitn.src", "daitn.length",
                         "daitn.chunk.offset", "daitn.error.text", "daitn.ack.next_offset",
                         "daitn.auth.nonce", "daitn.target_accuracy", "_ws.col.Info"],
                  dfilter="daitn")
    # frame 1: probe + hello; the frame completing `big` (whose segment also
    # starts `tail`); the last forward frame: tail; then the ACK frame.
    nfwd = len(fwd)
    assert [int(r["frame.number"][0]) for r in rows] == [1, nfwd - 1, nfwd, nfwd + 1]
    r1, rbig, rtail, rack = rows
    assert r1["daitn.type"] == ["5", "12"] and r1["daitn.seq"] == ["1", "2"]
    assert r1["daitn.length"] == ["0", str(len(p_error(7, "hi")))]
    assert r1["daitn.error.text"] == ["hi"]
    assert "MODEL_CHUNK" in r1["_ws.col.Info"][0] and " | ERROR" in r1["_ws.col.Info"][0]
    assert rbig["daitn.type"] == ["5"] and rbig["daitn.length"] == [str(len(model))]
    assert rbig["daitn.auth.nonce"] == ["99"] and same(0.85, rbig["daitn.target_accuracy"][0])
    assert rtail["daitn.type"] == ["7"] and rtail["daitn.seq"] == ["4"]
    assert rack["daitn.type"] == ["6", "6"]
    assert rack["daitn.ack.next_offset"] == ["0", str(len(model))]
    # the reassembled 300 KiB model arrives intact
    data = fields(pcap, ["daitn.chunk.data"], dfilter=f"frame.number == {nfwd - 1}")
    assert hashlib.sha256(bytes.fromhex(data[0]["daitn.chunk.data"][0])).digest() == digest
    assert frames_matching(pcap, f"len(daitn.chunk.data) == {len(model)}") == [nfwd - 1]
    # every segment after the first is part of a reassembly (two passes to know
    # it); the one completing `big` also starts `tail`, reassembled in the last
    assert frames_matching(pcap, "tcp.reassembled_in", "-2") == list(range(2, nfwd))
    assert frames_matching(pcap, "daitn", "-2") == [1, nfwd - 1, nfwd, nfwd + 1]
    assert frames_matching(pcap, "_ws.malformed", "-2") == []


# --- cross-check with the Python codec (nodes/wire.py), when it exists -----------

def _wire_messages(W):
    """One message of every type through nodes.wire's public API, with every TLV."""
    digest = hashlib.sha256(b"w").digest()
    itin = W.Itinerary(ptr=1, lap=1, max_laps=3, segments=[2, 5, 7])
    full = {W.Tlv.TARGET_ACCURACY: 0.8125, W.Tlv.DEADLINE: DEADLINE, W.Tlv.PRIVACY_LEVEL: 1,
            W.Tlv.REQUIRED_LABELS: [1, 2], W.Tlv.MAX_HOPS: 9, W.Tlv.BYTE_BUDGET: 2**40}
    chunk = {W.Tlv.ITINERARY: itin, W.Tlv.MODEL_DIGEST: digest,
             W.Tlv.CHUNK: W.Chunk(1024, 4096), W.Tlv.PARTIES: W.Parties(2, 7),
             W.Tlv.TARGET_ACCURACY: 0.9, W.Tlv.DEADLINE: DEADLINE}
    M = W.Message
    return [
        (M(W.MsgType.KNOWLEDGE_REPORT, src=5, dst=W.DCC_NODE, seq=3,
           body=W.KnowledgeReport(roles=W.Role.DATA | W.Role.MPVU | W.Role.INFERENCE,
                                  samples=600, verification_samples=100, label_hist=[60] * 10,
                                  capacity=0.75, load=0.375, queue_len=12, service_ms=8.5,
                                  noise_epsilon=2.0, report_seq=77, models=[30, 31, 2**31])),
         None),
        (M(W.MsgType.TRAIN_REQUEST, task_id=3, src=2, dst=W.DCC_NODE, tlvs=full,
           body=W.TrainRequest(model_bytes=250_000)), None),
        (M(W.MsgType.FEASIBILITY, flags=W.REPLY, task_id=3, src=W.DCC_NODE, dst=2,
           body=W.Feasibility(feasible=False, est_seconds=2.5, est_bytes=10**9,
                              reasons=["too slow", "ünïcode"])), None),
        (M(W.MsgType.ITINERARY, task_id=3, model_id=30, src=W.DCC_NODE, dst=2,
           tlvs={W.Tlv.ITINERARY: itin, W.Tlv.TRANSPORT: 26, W.Tlv.PARTIES: W.Parties(2, 7)},
           body=W.ItineraryBody(policy="round-robin")), None),
        (M(W.MsgType.MODEL_CHUNK, flags=W.LAST, hop_count=1, hop_limit=6, task_id=3,
           model_id=30, model_version=4, src=2, dst=5, seq=8, ack=7, tlvs=chunk,
           body=bytes(range(200))), (b"k" * 32, 12345)),
        (M(W.MsgType.ACK, flags=W.REPLY, task_id=3, src=5, dst=2,
           body=W.Ack(next_offset=4096, status=W.AckStatus.OK)), None),
        (M(W.MsgType.EVAL_REQUEST, task_id=3, model_version=4, src=5, dst=7,
           tlvs={W.Tlv.MODEL_DIGEST: digest, W.Tlv.CHUNK: W.Chunk(0, 3)}, body=b"abc"), None),
        (M(W.MsgType.EVAL_VERDICT, task_id=3, model_version=4, src=7, dst=5,
           body=W.EvalVerdict(accuracy=0.625, loss=1.5, samples=100,
                              per_class=[0.5, None, 0.75])), None),
        (M(W.MsgType.TASK_RESULT, task_id=3, model_version=9, src=5, dst=2,
           tlvs={W.Tlv.MODEL_DIGEST: digest, W.Tlv.CHUNK: W.Chunk(0, 2),
                 W.Tlv.END_REASON: W.EndReason.DEADLINE, W.Tlv.ACCURACY: 0.7777},
           body=b"zz"), None),
        (M(W.MsgType.INFERENCE_QUERY, src=3, dst=6,
           tlvs={W.Tlv.MAX_LATENCY: 40, W.Tlv.MIN_ACCURACY: 0.6, W.Tlv.PRIVACY_LEVEL: 0},
           body=W.InferenceQuery(features=[0.25, -1.0])), None),
        (M(W.MsgType.INFERENCE_RESULT, flags=W.REPLY, src=6, dst=3,
           body=W.InferenceResult(label=4, confidence=0.5, service_ms=1.25)), None),
        (M(W.MsgType.ERROR, src=W.DCC_NODE, dst=3, body=W.Error(code=9, text="nope")), None),
    ]


def _expected_from_wire(W, m, raw):
    """Field values the dissector must show for the decoded message `m` (bytes `raw`)."""
    e = {"daitn.magic": [0x4441], "daitn.version": [3], "daitn.type": [int(m.type)],
         "daitn.flags": [m.flags], "daitn.hdr_len": [raw[5]], "daitn.hop_count": [m.hop_count],
         "daitn.hop_limit": [m.hop_limit], "daitn.task_id": [m.task_id],
         "daitn.model_id": [m.model_id], "daitn.model_version": [m.model_version],
         "daitn.src": [m.src], "daitn.dst": [m.dst], "daitn.seq": [m.seq], "daitn.ack": [m.ack],
         "daitn.length": [struct.unpack(">I", raw[32:36])[0]]}
    T = W.Tlv
    t = m.tlvs
    e["daitn.tlv.type"] = sorted(int(k) for k in t)
    simple = {T.TARGET_ACCURACY: "daitn.target_accuracy", T.DEADLINE: "daitn.deadline",
              T.MAX_LATENCY: "daitn.max_latency", T.MIN_ACCURACY: "daitn.min_accuracy",
              T.PRIVACY_LEVEL: "daitn.privacy", T.MAX_HOPS: "daitn.max_hops",
              T.BYTE_BUDGET: "daitn.byte_budget", T.MODEL_DIGEST: "daitn.digest",
              T.TRANSPORT: "daitn.dscp", T.END_REASON: "daitn.end_reason",
              T.ACCURACY: "daitn.accuracy"}
    for k, name in simple.items():
        if k in t:
            v = t[k]
            e[name] = [float(v) if isinstance(v, float) else (v if isinstance(v, bytes) else int(v))]
    if T.REQUIRED_LABELS in t:
        e["daitn.required_label"] = list(t[T.REQUIRED_LABELS])
    if T.ITINERARY in t:
        it = t[T.ITINERARY]
        e.update({"daitn.itin.ptr": [it.ptr], "daitn.itin.lap": [it.lap],
                  "daitn.itin.max_laps": [it.max_laps], "daitn.itin.segment": list(it.segments)})
    if T.CHUNK in t:
        e["daitn.chunk.offset"] = [t[T.CHUNK].offset]
        e["daitn.chunk.total"] = [t[T.CHUNK].total]
    if T.PARTIES in t:
        e["daitn.client"] = [t[T.PARTIES].client]
        e["daitn.mpvu"] = [t[T.PARTIES].mpvu]
    b = m.body
    if isinstance(b, W.KnowledgeReport):
        e.update({"daitn.kr.roles": [int(b.roles)], "daitn.kr.samples": [b.samples],
                  "daitn.kr.verification_samples": [b.verification_samples],
                  "daitn.kr.n": [len(b.label_hist)], "daitn.kr.n_models": [len(b.models)],
                  "daitn.kr.report_seq": [b.report_seq], "daitn.kr.queue_len": [b.queue_len],
                  "daitn.kr.capacity": [float(b.capacity)], "daitn.kr.load": [float(b.load)],
                  "daitn.kr.service_ms": [float(b.service_ms)],
                  "daitn.kr.noise_epsilon": [float(b.noise_epsilon)],
                  "daitn.kr.hist": list(b.label_hist), "daitn.kr.model": list(b.models)})
    elif isinstance(b, W.TrainRequest):
        e["daitn.treq.model_bytes"] = [b.model_bytes]
    elif isinstance(b, W.Feasibility):
        e.update({"daitn.feas.feasible": [int(b.feasible)],
                  "daitn.feas.est_seconds": [float(b.est_seconds)],
                  "daitn.feas.est_bytes": [b.est_bytes], "daitn.feas.reason": list(b.reasons)})
    elif isinstance(b, W.ItineraryBody):
        e["daitn.itin.policy"] = [b.policy]
    elif isinstance(b, W.Ack):
        e.update({"daitn.ack.next_offset": [b.next_offset], "daitn.ack.status": [int(b.status)]})
    elif isinstance(b, W.EvalVerdict):
        e.update({"daitn.verdict.accuracy": [float(b.accuracy)],
                  "daitn.verdict.loss": [float(b.loss)],
                  "daitn.verdict.samples": [b.samples],
                  "daitn.verdict.per_class": [NAN if x is None else float(x)
                                              for x in b.per_class]})
    elif isinstance(b, W.InferenceQuery):
        e["daitn.query.feature"] = [float(x) for x in b.features]
    elif isinstance(b, W.InferenceResult):
        e.update({"daitn.result.label": [b.label],
                  "daitn.result.confidence": [float(b.confidence)],
                  "daitn.result.service_ms": [float(b.service_ms)]})
    elif isinstance(b, W.Error):
        e.update({"daitn.error.code": [b.code], "daitn.error.text": [b.text] if b.text else []})
    elif isinstance(b, bytes):
        e["daitn.chunk.data"] = [b] if b else []
    if m.nonce is not None:
        e["daitn.auth.nonce"] = [m.nonce]
        e["daitn.auth.tag"] = [raw[-32:]]
    return e


def test_agrees_with_nodes_wire(tmp_path):
    W = pytest.importorskip("nodes.wire", reason="nodes/wire.py not written yet")
    raws, expected = [], []
    for m, auth in _wire_messages(W):
        raw = W.encode(m, key=auth[0], nonce=auth[1]) if auth else W.encode(m)
        back = W.decode(raw, key=auth[0]) if auth else W.decode(raw)
        raws.append(raw)
        expected.append(_expected_from_wire(W, back, raw))
    assert sorted({r[3] for r in raws}) == list(range(1, 13))
    names = sorted(set().union(*expected))

    # UDP: one message a datagram
    pcap = tmp_path / "wire_udp.pcap"
    wrpcap(str(pcap), udp_frames(raws))
    assert frames_matching(pcap, "_ws.malformed || _ws.expert.severity >= 6291456") == []
    rows = fields(pcap, names)
    assert len(rows) == len(raws)
    for row, exp in zip(rows, expected):
        check_frame(row, exp)

    # TCP: the same messages back to back, cut into 97-byte segments
    stream = b"".join(raws)
    pcap = tmp_path / "wire_tcp.pcap"
    wrpcap(str(pcap), tcp_stream([stream[i:i + 97] for i in range(0, len(stream), 97)]))
    assert frames_matching(pcap, "_ws.malformed") == []
    rows = fields(pcap, ["daitn.type", "daitn.length"], dfilter="daitn")
    assert [int(t) for r in rows for t in r["daitn.type"]] == [r[3] for r in raws]
    assert [int(n) for r in rows for n in r["daitn.length"]] == [e["daitn.length"][0]
                                                                  for e in expected]
